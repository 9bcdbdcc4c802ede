"""The accelerator's convolution (warpgrad.accel.conv): F.conv2d's values and derivatives to
second order for every combination of inputs that need a gradient, while its second
derivative skips the terms nobody asked for (the data's gradient, a constant θ's), and the
plain F.conv2d wherever its path does not apply. The reference side of every comparison is
PyTorch's own ``F.conv2d`` / ``nn.Conv2d``, what an unconverted model runs."""

from __future__ import annotations

import itertools
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers import calls_of
from warpgrad.accel import conv as accel_conv
from warpgrad.accel.conv import Conv2d, conv2d
from warpgrad.accel.scopes import META_BACKWARD_BF16, SECOND_ORDER


@pytest.fixture
def in_second_order():
    """The convolution's own backward applies to passes whose gradient is differentiated
    again, which the accelerated backend opens this scope around."""
    with SECOND_ORDER:
        yield


CONFIGS = [  # stride, padding, dilation, groups, bias
    ((1, 1), (1, 1), (1, 1), 1, True),
    ((2, 2), (1, 0), (1, 1), 1, False),
    ((1, 2), (2, 2), (2, 1), 2, True),
]


def _tensors(config, channels_last: bool, seed: int = 0):
    _, _, _, groups, bias = config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 7, 8, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64) if bias else None
    return x, w, b


def _ours(config):
    stride, padding, dilation, groups, _ = config
    return lambda x, w, b=None: conv2d(x, w, b, stride, padding, dilation, groups)


def _theirs(config):
    stride, padding, dilation, groups, _ = config
    return lambda x, w, b=None: F.conv2d(x, w, b, stride, padding, dilation, groups)


@pytest.mark.usefixtures("in_second_order")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_and_gradgradcheck(config, channels_last):
    inputs = [t.requires_grad_() for t in _tensors(config, channels_last) if t is not None]
    assert torch.autograd.gradcheck(_ours(config), inputs)
    assert torch.autograd.gradgradcheck(_ours(config), inputs)


def _derivatives(conv, inputs, needs, seed=3):
    """The output, the gradient of ⟨upstream, out⟩ in the inputs that need one and in
    ``upstream``, and the gradient of ⟨v, those gradients⟩ + ⟨upstream, out⟩² in the same
    (a second derivative through every input of the convolution's backward)."""
    leaves = [None if t is None else t.detach().requires_grad_(need)
              for t, need in zip(inputs, needs, strict=True)]
    upstream = torch.randn(conv(*inputs).shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).requires_grad_()
    out = conv(*leaves)
    wanted = [t for t in leaves if t is not None and t.requires_grad] + [upstream]
    first = torch.autograd.grad((out * upstream).sum(), wanted, create_graph=True)
    g = torch.Generator().manual_seed(seed + 1)
    meta = sum((torch.randn(d.shape, generator=g, dtype=d.dtype) * d).sum() for d in first)
    meta = meta + (out * upstream).sum() ** 2
    second = torch.autograd.grad(meta, wanted, allow_unused=True)
    return [out, *first, *second]


@pytest.mark.usefixtures("in_second_order")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("needs", [n for n in itertools.product([False, True], repeat=3)
                                   if any(n)])
def test_first_and_second_derivatives_match_f_conv2d(monkeypatch, config, needs):
    calls = calls_of(monkeypatch, accel_conv._Conv2d)
    inputs = _tensors(config, channels_last=True)
    needs = tuple(need and t is not None for t, need in zip(inputs, needs, strict=True))
    if not any(needs):
        pytest.skip("no input that exists needs a gradient")
    ours = _derivatives(_ours(config), inputs, needs)
    assert calls  # the accelerator's function, not F.conv2d
    theirs = _derivatives(_theirs(config), inputs, needs)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        if b is None:
            assert a is None or not a.abs().max() > 0
            continue
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class _ConvOutputs(TorchDispatchMode):
    """Shapes of what every convolution kernel returns while active."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.convolution.default,
                    torch.ops.aten.convolution_backward.default):
            outs = out if isinstance(out, tuple) else (out,)
            self.shapes += [tuple(t.shape) for t in outs if t is not None]
            self.dtypes += [t.dtype for t in outs if t is not None]
        return out


def _f_conv2d(x, w, b, stride, padding):
    return F.conv2d(x, w, b, stride, padding)


def _second_derivative_convolutions(convolve):
    """The φ-gradient of ⟨v, ∇_θ L(θ, φ)⟩ at a constant θ on x → conv θ1 → conv φ → conv θ2
    (the part of WarpGrad's exact meta-gradient that differentiates the inner gradient),
    with ``convolve`` (the accelerator's ``conv2d`` or ``F.conv2d``): every shape its
    convolutions return, and the gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64)
    theta = torch.randn(3 * 2 * 9 + 5 * 3 * 9, generator=g, dtype=torch.float64)
    v = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    phi = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def loss(th):
        w1, w2 = th[:54].view(3, 2, 3, 3), th[54:].view(5, 3, 3, 3)
        h = convolve(x, w1, None, (1, 1), (1, 1))
        h = convolve(h, phi, None, (1, 1), (1, 1))
        return convolve(h, w2, None, (1, 1), (1, 1)).square().mean()

    meta = (torch.func.grad(loss)(theta) * v).sum()
    with _ConvOutputs() as seen:
        (grad,) = torch.autograd.grad(meta, phi)
    return seen.shapes, grad


@pytest.mark.usefixtures("in_second_order")
def test_second_derivative_skips_the_datas_and_constant_thetas_gradients():
    plain_shapes, plain = _second_derivative_convolutions(_f_conv2d)
    shapes, grad = _second_derivative_convolutions(conv2d)
    unneeded = {(4, 2, 8, 8), (3, 2, 3, 3), (5, 3, 3, 3)}  # x's and θ's shapes
    assert unneeded & set(plain_shapes)  # PyTorch's double backward computes them
    assert not unneeded & set(shapes)
    assert len(shapes) < len(plain_shapes)
    torch.testing.assert_close(grad, plain, rtol=1e-12, atol=1e-14)


def _meta_gradient_parts(dtype, bf16_block: bool, create_graph: bool = False,
                         backward_in_block: bool = False):
    """WarpGrad's exact meta-gradient on x → conv θ1 → conv φ → conv θ2 → loss, as the
    accelerated backend takes it under a bf16 model: the step's gradient ∇_θ L(θ, φ) inside
    the float32 block, then φ's gradient of ⟨v, ∇_θ L⟩ (the step's part of the
    meta-gradient). Returns the step's gradient, φ's gradient and the dtypes the
    convolutions computed that in."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    theta = (torch.randn(3 * 2 * 9 + 5 * 3 * 9, generator=g, dtype=torch.float64) / 3).to(dtype)
    v = torch.randn(theta.shape, generator=g, dtype=torch.float64).to(dtype)
    phi = (torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64) / 3).to(dtype)
    phi.requires_grad_()

    def loss(th):
        w1, w2 = th[:54].view(3, 2, 3, 3), th[54:].view(5, 3, 3, 3)
        h = conv2d(x, w1, None, (1, 1), (1, 1))
        h = conv2d(h, phi, None, (1, 1), (1, 1))
        return conv2d(h, w2, None, (1, 1), (1, 1)).square().mean()

    with SECOND_ORDER:
        with META_BACKWARD_BF16 if bf16_block else nullcontext():
            step = torch.func.grad(loss)(theta)
            if backward_in_block:
                with _ConvOutputs() as seen:
                    (grad,) = torch.autograd.grad((step * v).sum(), phi)
                return step, grad, seen.dtypes
        with _ConvOutputs() as seen:
            (grad,) = torch.autograd.grad((step * v).sum(), phi, create_graph=create_graph)
    return step, grad, seen.dtypes


def test_the_meta_backward_through_a_float32_pass_of_a_bf16_model_runs_in_bf16():
    """Under ``precision="bf16"`` WarpGrad's step runs in float32 and only the meta-gradient's
    backward through it, after the block and building no graph, convolves in bf16."""
    truth = _meta_gradient_parts(torch.float64, False)
    fp32 = _meta_gradient_parts(torch.float32, False)
    step, grad, dtypes = _meta_gradient_parts(torch.float32, True)
    assert torch.equal(step, fp32[0])  # the step's own gradient: float32, untouched
    assert set(fp32[2]) == {torch.float32} and torch.bfloat16 in dtypes
    assert grad.dtype == torch.float32 and not torch.equal(grad, fp32[1])
    error = ((grad.double() - truth[1]).norm() / truth[1].norm()).item()
    assert 1e-5 < error < 2e-2, error  # bf16's rounding (8 bits of mantissa), no more
    # a backward inside the block, or one that builds a graph, stays float32
    for kwargs in ({"backward_in_block": True}, {"create_graph": True}):
        _, kept, kept_dtypes = _meta_gradient_parts(torch.float32, True, **kwargs)
        assert set(kept_dtypes) == {torch.float32}, kwargs
        torch.testing.assert_close(kept, fp32[1], rtol=1e-6, atol=1e-7)


def _spy(monkeypatch) -> list[int]:
    return calls_of(monkeypatch, accel_conv._Conv2d)


def _twins(*args, **kwargs) -> tuple[Conv2d, nn.Conv2d]:
    """The accelerator's layer and ``nn.Conv2d``, with equal parameters."""
    torch.manual_seed(0)
    ours = Conv2d(*args, **kwargs)
    torch.manual_seed(0)
    return ours, nn.Conv2d(*args, **kwargs)


@pytest.mark.usefixtures("in_second_order")
def test_bf16_autocast_convolves_in_bf16_and_reaches_float32_weights(monkeypatch):
    calls = _spy(monkeypatch)
    x = torch.randn(2, 3, 6, 6)
    results = []
    for layer in reversed(_twins(3, 4, 3, padding=1)):  # nn.Conv2d, then ours
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.bfloat16
        grads = torch.autograd.grad(out.float().square().sum(), list(layer.parameters()))
        assert all(g.dtype == torch.float32 for g in grads)
        results.append([out.float(), *grads])
    assert calls  # ours ran its own function under autocast
    for ours, theirs in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.usefixtures("in_second_order")
def test_autocast_leaves_float64_alone_as_it_does_for_f_conv2d():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = conv2d(x, w, None, (1, 1), (1, 1))
        theirs = F.conv2d(x, w, None, 1, 1)
    assert ours.dtype == theirs.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_plain_f_conv2d_outside_the_scope_without_grad_under_vmap_and_other_padding(
        monkeypatch):
    calls = _spy(monkeypatch)
    layer = Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    layer(x).sum().backward()  # a first-order pass
    assert not calls
    with SECOND_ORDER:
        with torch.no_grad():
            layer(x)
        batched = torch.func.vmap(layer)(x.unsqueeze(1))
        torch.testing.assert_close(batched.squeeze(1), F.conv2d(x, layer.weight, layer.bias,
                                                                padding=1))
        reflect = Conv2d(2, 3, 3, padding=1, padding_mode="reflect").double()
        reflect(x).sum().backward()
        assert not calls
        layer(x).sum().backward()
    assert calls


def test_module_keeps_nn_conv2d_parameters_and_state_dict():
    ours, theirs = _twins(2, 3, 3, padding=1)
    assert isinstance(ours, nn.Conv2d)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b)
