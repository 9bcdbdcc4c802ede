"""The accelerator's max-pooling (warpgrad.accel.pool): F.max_pool2d's values and derivatives
to second order, ties included, while it saves only a small-integer argmax for its backward,
and nn.MaxPool2d itself wherever its path does not apply. The reference side of every
comparison is PyTorch's ``F.max_pool2d`` / ``nn.MaxPool2d``, what an unconverted model runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import calls_of
from warpgrad import accel, conv4
from warpgrad.accel import pool as accel_pool
from warpgrad.accel.pool import MaxPool2d, max_pool2d
from warpgrad.accel.scopes import ARGMAX_ONLY, SECOND_ORDER


@pytest.fixture
def in_second_order():
    with SECOND_ORDER:
        yield


def _input(shape, channels_last: bool, ties: bool = False, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: most windows hold their maximum twice or more
        x = x.mul(1.5).round().clamp(min=0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


SHAPES = [(2, 3, 8, 8), (2, 3, 7, 7), (1, 4, 5, 6)]


@pytest.mark.usefixtures("in_second_order")
@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_and_gradgradcheck(kernel, channels_last):
    x = _input((2, 3, 6, 7), channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, kernel), [x])
    assert torch.autograd.gradgradcheck(lambda t: max_pool2d(t, kernel), [x])


def _derivatives(pool, x, seed=3):
    """The output, the gradient of a cubic loss in x, and the gradient in x of a weighted
    square of that gradient (through the pool's backward and its own backward)."""
    x = x.detach().requires_grad_()
    out = pool(x)
    # weights in the tensors' own layout, so that the layout of what comes back is the pool's
    weight = torch.empty_like(out).copy_(torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    (first,) = torch.autograd.grad((out.pow(3) * weight).sum(), x, create_graph=True)
    ramp = torch.empty_like(first).copy_(torch.arange(first.numel()).view_as(first))
    (second,) = torch.autograd.grad((first.square() * ramp).sum(), x)
    return out, first, second


def _spy(monkeypatch) -> list[int]:
    return calls_of(monkeypatch, accel_pool._MaxPool2d)


@pytest.mark.usefixtures("in_second_order")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_values_and_derivatives_match_f_max_pool2d(monkeypatch, shape, channels_last, ties):
    calls = _spy(monkeypatch)
    x = _input(shape, channels_last, ties)
    ours = _derivatives(lambda t: max_pool2d(t, 2), x)
    assert calls  # the accelerator's function, not F.max_pool2d
    theirs = _derivatives(lambda t: F.max_pool2d(t, 2), x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same elements, picked alike
    if channels_last:  # the gradients keep the input's layout, as PyTorch's do
        assert all(t.is_contiguous(memory_format=torch.channels_last) for t in ours[1:])


@pytest.mark.usefixtures("in_second_order")
def test_under_torch_func_grad_a_second_derivative_matches():
    x = _input((2, 3, 8, 8), True)
    phi = torch.randn(3, 3, 1, 1, dtype=torch.float64, requires_grad=True)

    def meta(pool):
        def inner(t):  # x through a φ-dependent map, pooled, then a loss in t
            return (pool(F.conv2d(x, phi) * t).pow(3)).sum()
        grad = torch.func.grad(inner)(torch.tensor(1.3, dtype=torch.float64))
        return torch.autograd.grad(grad, phi)[0]

    torch.testing.assert_close(meta(lambda t: max_pool2d(t, 2)),
                               meta(lambda t: F.max_pool2d(t, 2)), rtol=1e-12, atol=1e-12)


def _saved(fn, x) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x)
    return saved


@pytest.mark.usefixtures("in_second_order")
def test_saves_a_small_integer_argmax_and_not_the_input():
    x = _input((2, 3, 8, 8), True).requires_grad_()
    theirs = _saved(lambda t: F.max_pool2d(t, 2), x)
    assert any(t.shape == x.shape for t in theirs)  # PyTorch keeps its input
    ours = _saved(lambda t: max_pool2d(t, 2), x)
    assert [(t.shape, t.dtype) for t in ours] == [((2, 3, 4, 4), torch.int16)]
    # its backward, differentiated again, keeps the same argmax
    out = max_pool2d(x, 2)
    again = _saved(lambda g: torch.autograd.grad(out, x, g, create_graph=True),
                   torch.ones_like(out, requires_grad=True))
    assert [(t.shape, t.dtype) for t in again] == [((2, 3, 4, 4), torch.int16)]
    # planes with more positions than int16 holds get int32
    big = torch.randn(1, 1, 182, 182, dtype=torch.float64, requires_grad=True)
    (argmax,) = _saved(lambda t: max_pool2d(t, 2), big)
    assert argmax.dtype == torch.int32
    torch.testing.assert_close(_derivatives(lambda t: max_pool2d(t, 2), big),
                               _derivatives(lambda t: F.max_pool2d(t, 2), big), rtol=0, atol=0)


def test_argmax_only_scope_extends_it_to_first_order_passes(monkeypatch):
    calls = _spy(monkeypatch)
    x = _input((2, 3, 8, 8), True)
    plain = _derivatives(lambda t: nn.MaxPool2d(2)(t), x)
    outside = _derivatives(lambda t: MaxPool2d(2)(t), x)
    assert not calls  # outside both scopes: nn.MaxPool2d's own path
    with ARGMAX_ONLY:
        ours = _derivatives(lambda t: MaxPool2d(2)(t), x)
    assert calls
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)
    torch.testing.assert_close(outside, plain, rtol=0, atol=0)


@pytest.mark.usefixtures("in_second_order")
def test_bf16_pools_in_bf16_like_f_max_pool2d():
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    results = []
    for pool in (lambda t: max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2)):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pool(leaf.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16
        (grad,) = torch.autograd.grad(out.float().square().sum(), leaf)
        assert grad.dtype == torch.float32
        results.append((out, grad))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_nn_max_pool2d_outside_the_scope_without_grad_under_vmap_and_for_other_windows(
        monkeypatch):
    calls = _spy(monkeypatch)
    x = _input((2, 3, 8, 8), False).requires_grad_()
    pool = MaxPool2d(2)
    pool(x).sum().backward()  # a first-order pass
    assert not calls
    with SECOND_ORDER:
        with torch.no_grad():
            pool(x)
        batched = torch.func.vmap(pool)(x.unsqueeze(1))
        torch.testing.assert_close(batched.squeeze(1), F.max_pool2d(x, 2))
        for other, reference in [
            (MaxPool2d(2, stride=1), F.max_pool2d(x, 2, stride=1)),  # windows overlap
            (MaxPool2d(2, padding=1), F.max_pool2d(x, 2, padding=1)),
            (MaxPool2d(3, ceil_mode=True), F.max_pool2d(x, 3, ceil_mode=True)),
            (MaxPool2d(2, dilation=2), F.max_pool2d(x, 2, dilation=2)),
        ]:
            torch.testing.assert_close(other(x), reference)
        _, indices = MaxPool2d(2, return_indices=True)(x)
        assert indices.dtype == torch.int64
        assert not calls
        pool(x).sum().backward()
    assert calls


def test_module_is_an_nn_max_pool2d_and_a_converted_conv4_uses_it():
    assert isinstance(MaxPool2d(2), nn.MaxPool2d)
    assert repr(MaxPool2d(2)) == repr(nn.MaxPool2d(2))
    reference = conv4(5, filters=4)
    assert sum(isinstance(m, MaxPool2d) for m in reference.modules()) == 0
    assert sum(isinstance(m, nn.MaxPool2d) for m in reference.modules()) == 4
    model = accel.convert(conv4(5, filters=4))
    assert sum(isinstance(m, MaxPool2d) for m in model.modules()) == 4
