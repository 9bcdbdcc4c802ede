"""warpgrad._autograd.Function: PyTorch's custom-function semantics (plain autograd, second
order, torch.func.grad and vmap) without PyTorch's per-call signature binding."""

from __future__ import annotations

import inspect

import pytest
import torch

from warpgrad._autograd import Function


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
