"""Conv4's max-pooling (warpgrad.models._pool): the channels-last forward on NCHW CPU input
is the same computation as ``nn.MaxPool2d``: values, indices, gradients, second
derivatives, and the fallbacks where it does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from warpgrad import conv4
from warpgrad.models import _pool
from warpgrad.models._pool import MaxPool2d


def _activation(shape=(3, 4, 7, 7), dtype=torch.float64, seed=0) -> torch.Tensor:
    """Conv-like activations with the ties of blank image regions, a NaN and -inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x[:, :, : shape[2] // 2] = 0.25  # a flat region: every window a tie
    x[:, 1, -1, -1] = -float("inf")
    x[0, 0, -2, -2] = float("nan")
    return x.to(dtype)


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []
    apply = _pool._ChannelsLastForward.apply
    monkeypatch.setattr(_pool._ChannelsLastForward, "apply",
                        lambda *args: calls.append(1) or apply(*args))
    return calls


@pytest.mark.parametrize("shape", [(3, 4, 7, 7), (2, 3, 28, 28), (2, 2, 3, 3), (1, 2, 6, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_values_and_gradients_equal_nn_maxpool(monkeypatch, shape, dtype):
    calls = _spy(monkeypatch)
    x = _activation(shape, dtype)
    ours, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = MaxPool2d(2)(ours), nn.MaxPool2d(2)(reference)
    assert calls  # the channels-last path ran
    assert torch.equal(out.nan_to_num(9.0), expected.nan_to_num(9.0))
    assert out.stride() == expected.stride()  # [B, C, 1, 1] too: later kernels follow strides
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out.backward(upstream)
    expected.backward(upstream)
    assert torch.equal(ours.grad, reference.grad)  # each window's gradient at the same index


def test_conv4_gradients_equal_those_with_nn_maxpool():
    """The whole learner, on images with blank backgrounds (ties in every pooling window):
    the same loss and bit-for-bit the same gradients for θ and φ."""
    torch.manual_seed(0)
    model = conv4(5, filters=8, warp="conv3x3")
    reference = copy.deepcopy(model)
    swapped = 0
    for block in reference.module.children():
        for i, layer in enumerate(getattr(block, "_modules", {}).values()):
            if isinstance(layer, MaxPool2d):
                block[i] = nn.MaxPool2d(2)
                swapped += 1
    assert swapped == 4
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 8:20, 12:15] = torch.rand(16, 1, 12, 3, generator=torch.Generator().manual_seed(4))
    y = torch.arange(16) % 5

    def gradients(m):
        theta = m.init_theta().detach().requires_grad_()
        phi = {n: p.detach().requires_grad_() for n, p in m.warp_parameters().items()}
        loss = F.cross_entropy(m(x, theta, phi), y)
        return [loss, *torch.autograd.grad(loss, [theta, *phi.values()])]

    for ours, theirs in zip(gradients(model), gradients(reference), strict=True):
        assert torch.equal(ours, theirs)


def test_second_derivatives_equal_nn_maxpool():
    """MAML differentiates the adaptation's gradients: a gradient through the pooling, taken
    with ``create_graph``, differentiated again."""
    x = _activation()
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def second(pool: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        leaf, weights = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = (pool(leaf).nan_to_num(0.0) * weights).pow(2).sum()
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
        return torch.autograd.grad((g * g.detach()).sum(), weights)[0], g

    ours, reference = second(MaxPool2d(2)), second(nn.MaxPool2d(2))
    assert torch.equal(ours[1], reference[1]) and torch.equal(ours[0], reference[0])
    assert reference[0].abs().sum() > 0


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(3))  # no ties: differentiable
    assert torch.autograd.gradcheck(MaxPool2d(2), (x,))
    assert torch.autograd.gradgradcheck(MaxPool2d(2), (x,))


def test_other_cases_are_nn_maxpool(monkeypatch):
    calls = _spy(monkeypatch)
    x = _activation((2, 3, 8, 8))
    pool = MaxPool2d(2)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool(nhwc).nan_to_num(9.0), nn.MaxPool2d(2)(x).nan_to_num(9.0))
    torch.func.vmap(pool)(x.unsqueeze(0).expand(2, -1, -1, -1, -1).contiguous())
    torch.func.grad(lambda t: pool(t).nan_to_num(0.0).sum())(x)
    MaxPool2d(3, stride=2, padding=1)(x)
    assert not calls
