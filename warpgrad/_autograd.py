"""Detaching only what autograd tracks."""

from __future__ import annotations

from typing import overload

from torch import Tensor


@overload
def detached(t: Tensor) -> Tensor: ...
@overload
def detached(t: None) -> None: ...
def detached(t: Tensor | None) -> Tensor | None:
    """``t.detach()`` where autograd tracks ``t``, else ``t`` itself: a detach is an operator
    the host dispatches, and on the engine's per-step paths (a GPU's CUDA graphs, where the
    host bounds the loop) most tensors come back already detached."""
    return t.detach() if t is not None and t.requires_grad else t
