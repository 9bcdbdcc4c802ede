"""warpgrad.accel.autograd: ``Function``, PyTorch's custom-function semantics (plain autograd,
second order, torch.func.grad and vmap) without PyTorch's per-call signature binding; and
``func_grad``, torch.func.grad for one argument without torch._dynamo's guard: the same
gradient, the same derivatives of it (in the argument and in what the function closes
over), under vmap and inside another grad. The reference side is PyTorch's own
``torch.autograd.Function.apply`` and ``torch.func.grad``."""

from __future__ import annotations

import inspect

import pytest
import torch

from warpgrad.accel.autograd import Function, _grad_at_new_level, detached, func_grad


# -- Function.apply ---------------------------------------------------------------------------
def _cube_function(base: type) -> type:
    class Cube(base):
        """x³ with a hand-written backward (3x² g), itself differentiable."""

        generate_vmap_rule = True

        @staticmethod
        def forward(x: torch.Tensor, scale: float) -> torch.Tensor:
            return scale * x**3

        @staticmethod
        def setup_context(ctx, inputs, output) -> None:
            x, ctx.scale = inputs
            ctx.save_for_backward(x)

        @staticmethod
        def backward(ctx, grad: torch.Tensor):
            (x,) = ctx.saved_tensors
            return 3 * ctx.scale * x**2 * grad, None

    return Cube


OURS, THEIRS = _cube_function(Function), _cube_function(torch.autograd.Function)


def _results(cube: type) -> list[torch.Tensor]:
    x = torch.linspace(-1.5, 2.0, 7, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    (first,) = torch.autograd.grad(cube.apply(leaf, 2.0).sum(), leaf, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), leaf)
    func_grad = torch.func.grad(lambda t: cube.apply(t, 2.0).sum())(x)
    per_row = torch.func.vmap(lambda t: cube.apply(t, 2.0))(x.view(7, 1))
    grad_of_vmap = torch.func.grad(
        lambda t: torch.func.vmap(lambda r: cube.apply(r, 2.0))(t).sum())(x.view(7, 1))
    return [first, second, func_grad, per_row, grad_of_vmap]


def test_same_results_as_pytorchs_apply_everywhere():
    x = torch.linspace(-1.5, 2.0, 7, dtype=torch.float64)
    expected = [6 * x**2, 12 * x, 6 * x**2, 2 * x.view(7, 1) ** 3, 6 * x.view(7, 1) ** 2]
    for ours, theirs, exact in zip(_results(OURS), _results(THEIRS), expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        torch.testing.assert_close(ours, exact)


def test_apply_does_not_bind_arguments_with_inspect(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("inspect.signature called")

    monkeypatch.setattr(inspect, "signature", refuse)
    with pytest.raises(AssertionError, match=r"inspect\.signature"):
        THEIRS.apply(torch.ones(2), 1.0)  # what the base class avoids
    leaf = torch.ones(2, requires_grad=True)
    OURS.apply(leaf, 1.0).sum().backward()
    torch.func.grad(lambda t: OURS.apply(t, 1.0).sum())(torch.ones(2))
    assert torch.equal(leaf.grad, torch.full((2,), 3.0))


def test_detached_detaches_only_what_autograd_tracks():
    plain = torch.ones(2)
    assert detached(plain) is plain and detached(None) is None
    tracked = torch.ones(2, requires_grad=True) * 2
    out = detached(tracked)
    assert out is not tracked and not out.requires_grad and torch.equal(out, tracked)


# -- func_grad --------------------------------------------------------------------------------
def _problem():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    data = torch.randn(7, 5, generator=g, dtype=torch.float64)

    def f(t: torch.Tensor) -> torch.Tensor:  # closes over w: a meta-parameter
        return torch.tanh(data @ (w @ t)).pow(2).sum() + t.pow(3).sum()

    return f, w, x


@pytest.mark.parametrize("ours", [func_grad, _grad_at_new_level])
def test_gradient_and_its_derivatives_equal_torch_func_grad(ours):
    f, w, x = _problem()
    results = []
    for impl in (ours, lambda f, x: torch.func.grad(f)(x)):
        g = impl(f, x)
        v = torch.linspace(-1, 1, g.numel(), dtype=g.dtype)
        # second order: through the gradient into the closure's w and into x itself
        dw, dx = torch.autograd.grad((g * v).sum(), (w, x))
        results.append((g, dw, dx))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g, dw, dx = results[0]
    assert dw.abs().sum() > 0 and dx.abs().sum() > 0  # both second-order terms exist
    # against an independent reference: a central difference of f along x's first entry
    step = torch.zeros_like(x)
    step[0] = 1e-6
    with torch.no_grad():
        reference = (f(x + step) - f(x - step)) / 2e-6
    assert abs(g[0].item() - reference.item()) < 1e-6


def test_under_vmap_and_nested_in_another_grad():
    f = _problem()[0]
    xs = torch.randn(4, 3, dtype=torch.float64)
    ours = torch.func.vmap(lambda t: _grad_at_new_level(f, t))(xs)
    theirs = torch.func.vmap(torch.func.grad(f))(xs)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # the gradient of a function of the gradient: a Hessian-vector product, both ways
    x = xs[0]
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    hv_ours = torch.func.grad(lambda t: (_grad_at_new_level(f, t) * v).sum())(x)
    hv_ours_inner = _grad_at_new_level(lambda t: (_grad_at_new_level(f, t) * v).sum(), x)
    hv = torch.func.grad(lambda t: (torch.func.grad(f)(t) * v).sum())(x)
    torch.testing.assert_close(hv_ours, hv, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hv_ours_inner, hv, rtol=1e-12, atol=1e-12)
    assert hv.abs().sum() > 0


def test_a_constant_function_has_a_zero_gradient_and_bad_outputs_are_named():
    x = torch.randn(3)
    g = _grad_at_new_level(lambda t: torch.tensor(2.0), x)
    assert torch.equal(g, torch.zeros(3))
    with pytest.raises(RuntimeError, match="scalar"):
        _grad_at_new_level(lambda t: t * 2, x)
    assert not torch._C._functorch.get_inplace_requires_grad_allowed()  # restored on error
    # and the transform stack is left as found: a plain op after the error is plain
    assert not torch._C._are_functorch_transforms_active()
