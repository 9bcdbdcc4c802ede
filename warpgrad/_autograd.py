"""Autograd helpers: detaching only what autograd tracks, and custom functions whose
``apply`` costs what PyTorch's C++ one does."""

from __future__ import annotations

from typing import Any, overload

import torch
from torch import Tensor

try:  # private functorch entry points: without them, PyTorch's own apply (slower, the same)
    from torch._functorch.autograd_function import custom_function_call as _functorch_call
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers

    _functorch_active = torch._C._are_functorch_transforms_active
except (ImportError, AttributeError):
    _functorch_call = None


@overload
def detached(t: Tensor) -> Tensor: ...
@overload
def detached(t: None) -> None: ...
def detached(t: Tensor | None) -> Tensor | None:
    """``t.detach()`` where autograd tracks ``t``, else ``t`` itself: a detach is an operator
    the host dispatches, and on the engine's per-step paths (a GPU's CUDA graphs, where the
    host bounds the loop) most tensors come back already detached."""
    return t.detach() if t is not None and t.requires_grad else t


class Function(torch.autograd.Function):
    """``torch.autograd.Function`` (``setup_context`` style, so ``torch.func`` transforms
    work) whose ``apply`` takes positional arguments only.

    PyTorch's ``apply`` binds the arguments against ``forward``'s signature with
    ``inspect`` on every call, to fill in defaults: ~70 us a call on a 2-core CPU, which is
    more than a convolution of a small batch costs. Called with every argument given, the
    binding changes nothing, so this ``apply`` goes straight to what PyTorch's calls next.
    """

    @classmethod
    def apply(cls, *args: Any) -> Any:
        if _functorch_call is None:
            return super().apply(*args)
        if _functorch_active():
            return _functorch_call(cls, *args)
        # the C++ apply of torch.autograd.Function's base, as PyTorch's apply ends
        return super(torch.autograd.Function, cls).apply(*_unwrap_dead_wrappers(args))
