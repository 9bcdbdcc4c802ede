"""Which ``torch.func`` transforms the current call runs under, for layers whose fast path
holds only outside some of them. Reads PyTorch's private functorch interpreter stack;
where that API is missing, callers are told they may be inside any transform."""

from __future__ import annotations

import torch
from torch import Tensor

_peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
_stack = getattr(torch._C._functorch, "get_interpreter_stack", None)

CAN_TELL = _stack is not None
"""Whether :func:`under_vmap` and :func:`outside_all_but_grad` can see the transforms."""


def in_any_transform() -> bool:
    """Inside some ``torch.func`` transform (vmap, grad, jvp, ...)."""
    return _peek is not None and _peek() is not None


def under_vmap() -> bool:
    """Inside ``torch.func.vmap`` (False where that cannot be told)."""
    levels = _stack() if _stack is not None else None
    vmap = torch._C._functorch.TransformType.Vmap
    return bool(levels) and any(level.key() == vmap for level in levels)


def outside_all_but_grad() -> bool:
    """Plain autograd, or only ``torch.func.grad`` / ``vjp`` levels (False where that cannot
    be told and some transform is active)."""
    if not in_any_transform():
        return True
    if _stack is None:
        return False
    grad = torch._C._functorch.TransformType.Grad
    return all(level.key() == grad for level in _stack())


def eager_cpu(x: Tensor) -> bool:
    """``x`` on the CPU, in eager PyTorch (not being traced by ``torch.compile``), under plain
    autograd or ``torch.func.grad`` only: where the library's CPU layer paths apply
    (channels-last blocks, the layers' own autograd functions)."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and outside_all_but_grad())
