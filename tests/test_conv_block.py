"""Conv4's blocks convolve and pool channels-last on the CPU (warpgrad.models._conv_block):
the same values and gradients as the plain NCHW ``nn.Sequential``, to second order, under
``torch.func.grad`` too, and the plain block wherever that path does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from warpgrad import MetaLearner, conv4
from warpgrad.algorithms import Leap, WarpGrad
from warpgrad.models import _conv_block
from warpgrad.models._conv_block import ConvBlock, _to_nchw
from warpgrad.models.warped import to_channels_last
from warpgrad.tasks import Task


def _activation(shape=(3, 4, 7, 7), dtype=torch.float64, seed=0) -> torch.Tensor:
    """Conv-like activations with the ties of blank image regions, a NaN and -inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x[:, :, : shape[2] // 2] = 0.25  # a flat region: every window a tie
    x[:, 1, -1, -1] = -float("inf")
    x[0, 0, -2, -2] = float("nan")
    return x.to(dtype)


@pytest.mark.parametrize("shape", [(3, 4, 7, 7), (2, 3, 28, 28), (2, 2, 3, 3), (1, 2, 6, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_both_pooling_kernels_pick_the_same_element_of_every_window(shape, dtype):
    """What the block relies on: NHWC pooling gives NCHW pooling's values and indices
    (first maximum of a tie, NaN wins), so the gradient lands on the same element."""
    x = _activation(shape, dtype)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous() or shape[1] == 1
    values, index = F.max_pool2d(x, 2, return_indices=True)
    nhwc_values, nhwc_index = F.max_pool2d(nhwc, 2, return_indices=True)
    assert torch.equal(nhwc_values.nan_to_num(9.0), values.nan_to_num(9.0))
    assert torch.equal(nhwc_index, index)


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []
    convert = _conv_block._to_nchw
    monkeypatch.setattr(_conv_block, "_to_nchw", lambda y: calls.append(1) or convert(y))
    return calls


def _block(in_channels: int, dtype=torch.float64, seed=0) -> ConvBlock:
    torch.manual_seed(seed)
    return ConvBlock(nn.Conv2d(in_channels, 6, 3, padding=1), nn.MaxPool2d(2),
                     nn.BatchNorm2d(6, track_running_stats=False), nn.ReLU()).to(dtype)


def _images(n: int, channels: int, size: int, dtype=torch.float64, seed=1) -> torch.Tensor:
    """Mostly blank images: the convolution's output ties in every blank pooling window."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, channels, size, size, dtype=torch.float64)
    rows = slice(size // 4, size // 2 + 1)
    x[:, :, rows, 1:3] = torch.rand(n, channels, rows.stop - rows.start, 2, generator=g,
                                    dtype=torch.float64)
    return x.to(dtype)


@pytest.mark.parametrize("channels,size,every", [(1, 28, 1), (3, 9, 1), (8, 7, 1), (6, 3, 1),
                                                 (1, 28, 2), (3, 9, 2)])
def test_block_gives_the_plain_blocks_values_and_gradients(monkeypatch, channels, size, every):
    """``every``: 2 feeds every other image, a view that is not contiguous (as a task's whole
    training set can be)."""
    calls = _spy(monkeypatch)
    block = _block(channels)
    x = _images(10, channels, size)[::every]

    def run(channels_last: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(_conv_block, "CHANNELS_LAST", channels_last)
        leaf = x.clone().requires_grad_()
        out = block(leaf)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2),
                               dtype=out.dtype)
        return [out, *torch.autograd.grad(out, [leaf, *block.parameters()], upstream)]

    plain = run(False)
    assert not calls
    fast = run(True)
    assert calls  # the channels-last path ran
    assert fast[0].is_contiguous()  # NCHW out, as the plain block
    # the same sums, in another order
    for ours, theirs in zip(fast, plain, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_gradient_goes_back_channels_last():
    """Why the copy back to NCHW is an autograd function: the channels-last pooling's
    backward gets its gradient in its own layout, not NCHW (a slow path)."""
    y = torch.randn(2, 5, 3, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = _to_nchw(y)
    assert out.is_contiguous() and torch.equal(out, y)
    (grad,) = torch.autograd.grad(out, y, torch.randn(2, 5, 3, 4))
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()


def _conv4_pair(**kwargs):
    torch.manual_seed(0)
    return conv4(5, filters=8, **kwargs).double()




def test_conv4_first_and_second_order_gradients_match_the_plain_blocks(monkeypatch):
    """The whole learner with warps: its loss, θ and φ gradients, and a second derivative
    through them (what MAML and the exact objective differentiate)."""
    calls = _spy(monkeypatch)
    model = _conv4_pair()
    x, y = _images(12, 1, 28), torch.arange(12) % 5
    results = []
    for channels_last in (False, True):
        monkeypatch.setattr(_conv_block, "CHANNELS_LAST", channels_last)
        theta = model.init_theta().detach().requires_grad_()
        phi = {n: p.detach().requires_grad_() for n, p in model.warp_parameters().items()}
        loss = F.cross_entropy(model(x, theta, phi), y)
        g_theta, *g_phi = torch.autograd.grad(loss, [theta, *phi.values()], create_graph=True)
        second = torch.autograd.grad(g_theta.square().sum(), list(phi.values()))
        results.append([loss, g_theta, *g_phi, *second])
    assert len(calls) == 4  # every block, in the second pass only
    assert results[0][-1].abs().sum() > 0
    for ours, theirs in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_under_torch_func_grad_the_channels_last_path_runs_and_agrees(monkeypatch):
    """The exact objective's inner gradient is a ``torch.func.grad``."""
    calls = _spy(monkeypatch)
    model = _conv4_pair()
    x, y = _images(12, 1, 28), torch.arange(12) % 5
    theta = model.init_theta().detach()
    grads = []
    for channels_last in (False, True):
        monkeypatch.setattr(_conv_block, "CHANNELS_LAST", channels_last)
        grads.append(torch.func.grad(lambda t: F.cross_entropy(model(x, t), y))(theta))
    assert calls
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    block = _block(2)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(3))  # no ties: differentiable
    assert torch.autograd.gradcheck(block, (x,))
    assert torch.autograd.gradgradcheck(block, (x,))


def test_other_cases_are_the_plain_block(monkeypatch):
    """Under vmap (a hidden batch dimension), with a model already channels-last, or a
    block that is not conv then pool, the block is an ``nn.Sequential``."""
    calls = _spy(monkeypatch)
    block = _block(3)
    x = _images(4, 3, 8)
    batched = torch.stack([x, x.flip(0)])
    vmapped = torch.func.vmap(block)(batched)
    torch.testing.assert_close(vmapped[1], block(x.flip(0)), rtol=1e-12, atol=1e-12)
    calls.clear()
    block(x.contiguous(memory_format=torch.channels_last))
    _block(1)(to_channels_last(_images(4, 1, 8)))  # one channel: NHWC by its strides
    ConvBlock(nn.Conv2d(3, 6, 3, padding=1).double(), nn.ReLU())(x)
    ConvBlock(nn.Conv2d(3, 6, 3, padding=1).double(), nn.MaxPool2d(2, return_indices=True))(x)
    assert not calls


def test_meta_step_matches_the_plain_blocks(monkeypatch):
    """A Warp-Leap meta-step with the exact objective (adaptation, buffer, φ and θ_0
    updates) is the same computation with and without channels-last blocks."""
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    tasks = []
    for _ in range(2):
        x = _images(18, 1, 28, seed=int(torch.randint(100, (1,), generator=g)))
        y = torch.arange(3).repeat_interleave(6)
        tasks.append(Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=8))
    torch.manual_seed(0)
    reference = conv4(3, filters=8).double()
    results = []
    for channels_last in (False, True):
        monkeypatch.setattr(_conv_block, "CHANNELS_LAST", channels_last)
        model = copy.deepcopy(reference)
        learner = MetaLearner(model, F.cross_entropy, steps=3, warp=WarpGrad("exact"),
                              init=Leap(), inner_lr=0.1, seed=0)
        learner.meta_step(tasks)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert bool(calls) == channels_last
    start = torch.cat([p.detach().flatten() for p in reference.parameters()])
    assert (results[0] - start).abs().max() > 1e-3
    # float64 rounding, amplified by batch norm over 8 samples at 1x1 in block 4
    torch.testing.assert_close(results[1], results[0], rtol=1e-7, atol=1e-9)
