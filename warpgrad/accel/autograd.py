"""Autograd helpers of the accelerated layers: custom functions whose ``apply`` costs what
PyTorch's C++ one does, and ``torch.func.grad`` without ``torch._dynamo``. ``detached`` is
the engine's (:func:`warpgrad.engine.backend.detached`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from warpgrad.engine.backend import detached

__all__ = ["Function", "detached", "func_grad"]

try:  # private functorch entry points: without them, PyTorch's own apply (slower, the same)
    from torch._functorch.autograd_function import custom_function_call as _functorch_call
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers

    _functorch_active = torch._C._are_functorch_transforms_active
except (ImportError, AttributeError):
    _functorch_call = None

try:  # private functorch entry points: without them, torch.func.grad (the same)
    from torch._C._functorch import (
        _grad_decrement_nesting,
        _grad_increment_nesting,
        _unwrap_for_grad,
        _wrap_for_grad,
        get_inplace_requires_grad_allowed,
        set_inplace_requires_grad_allowed,
    )
except ImportError:
    _grad_increment_nesting = None


class Function(torch.autograd.Function):
    """``torch.autograd.Function`` (``setup_context`` style, so ``torch.func`` transforms
    work) whose ``apply`` takes positional arguments only.

    PyTorch's ``apply`` binds the arguments against ``forward``'s signature with
    ``inspect`` on every call, to fill in defaults, which can cost more than a convolution
    of a small batch. Called with every argument given, the binding changes nothing, so this
    ``apply`` goes straight to what PyTorch's calls next.
    """

    @classmethod
    def apply(cls, *args: Any) -> Any:
        if _functorch_call is None:
            return super().apply(*args)
        if _functorch_active():
            return _functorch_call(cls, *args)
        # the C++ apply of torch.autograd.Function's base, as PyTorch's apply ends
        return super(torch.autograd.Function, cls).apply(*_unwrap_dead_wrappers(args))


def func_grad(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``torch.func.grad(f)(x)`` for one tensor argument and a scalar ``f``: the gradient,
    shaped like ``x``, and like ``torch.func.grad``'s differentiable by enclosing autograd
    and transforms in ``x`` and in whatever ``f`` closes over.

    ``torch.func.grad`` wraps its backward in ``torch._dynamo.compiled_autograd``'s guard,
    which imports ``torch._dynamo`` and with it sympy and ~800 modules (memory and start-up
    time of every process, docs/performance.md), for a guard that matters only once
    ``torch._dynamo`` is in use. Until then this is the same transform without the guard.
    """
    if _grad_increment_nesting is None or "torch._dynamo" in sys.modules:
        return torch.func.grad(f)(x)
    return _grad_at_new_level(f, x)


def _grad_at_new_level(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """What ``torch.func.grad`` does for one argument: ``x`` wrapped at a new level of
    functorch's grad transform, differentiated there, the gradient unwrapped."""
    level = _grad_increment_nesting()
    try:
        with torch.enable_grad(), torch.autograd.graph.disable_saved_tensors_hooks(
                "warpgrad's func_grad, like torch.func.grad, does not support saved tensor hooks"):
            wrapped = _wrap_for_grad(x, level)
            allowed = get_inplace_requires_grad_allowed()
            set_inplace_requires_grad_allowed(True)
            try:
                wrapped.requires_grad_()
            finally:
                set_inplace_requires_grad_allowed(allowed)
            out = f(wrapped)
            if not isinstance(out, Tensor) or out.dim() != 0:
                raise RuntimeError("func_grad(f, x): f(x) must return a scalar tensor")
            g = None
            if out.requires_grad:
                # create_graph: the backward's own operators are recorded at the enclosing
                # levels, which is what makes the gradient differentiable there
                (g,) = torch.autograd.grad(out, wrapped, create_graph=True, allow_unused=True)
            if g is None:
                g = torch.zeros_like(wrapped)
            return _unwrap_for_grad(g, level)
    finally:
        _grad_decrement_nesting()
