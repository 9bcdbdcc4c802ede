"""Where the accelerated layers' CPU paths apply: which ``torch.func`` transforms the current
call runs under (PyTorch's private functorch interpreter stack; where that API is missing,
callers are told they may be inside any transform), and the layout helper they share."""

from __future__ import annotations

import torch
from torch import Tensor

from warpgrad.models.batch_norm import under_vmap

__all__ = ["eager_cpu", "in_any_transform", "outside_all_but_grad", "to_channels_last",
           "under_vmap"]

_peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
_stack = getattr(torch._C._functorch, "get_interpreter_stack", None)


def in_any_transform() -> bool:
    """Inside some ``torch.func`` transform (vmap, grad, jvp, ...)."""
    return _peek is not None and _peek() is not None


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
    autograd or ``torch.func.grad`` only: where the CPU layer paths apply (channels-last
    blocks, the layers' own autograd functions)."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and outside_all_but_grad())


def to_channels_last(x: Tensor) -> Tensor:
    """``x [N, C, H, W]`` in the channels-last (NHWC) memory layout, same values.

    For ``C == 1`` the NCHW and NHWC layouts hold the same bytes and ``.contiguous(
    memory_format=torch.channels_last)`` is a no-op that convolution still reads as NCHW; the
    strides are then set explicitly, so that every convolution after it keeps channels-last.
    """
    if x.shape[1] != 1:
        return x.contiguous(memory_format=torch.channels_last)
    x = x.contiguous()
    _, _, h, w = x.shape
    return x.as_strided(x.shape, (h * w, 1, w, 1))
