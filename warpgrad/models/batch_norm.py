"""Batch norm whose second derivative stays exact under ``torch.func.vmap``.

The batching rule of PyTorch's fused batch-norm backward is wrong for second-order
gradients (pytorch/functorch#534): the exact WarpGrad meta-gradient of several points in one
vmap came out 2.3e-3 off the one-point-at-a-time one in float64. Under vmap these layers
therefore compute batch norm with batch statistics from primitive operators (mean,
variance, scale, shift), whose batching rules are exact to every order; everywhere else
they are ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``. ``WarpGrad(batched=True)`` relies on them
for the exact variant of a model with batch norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_stack = getattr(torch._C._functorch, "get_interpreter_stack", None)

CAN_TELL = _stack is not None
"""Whether :func:`under_vmap` can see the transforms (a private PyTorch API)."""


def under_vmap() -> bool:
    """Inside ``torch.func.vmap`` (``False`` where that cannot be told)."""
    levels = _stack() if _stack is not None else None
    vmap = torch._C._functorch.TransformType.Vmap
    return bool(levels) and any(level.key() == vmap for level in levels)


def batch_norm_from_primitives(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                               eps: float) -> Tensor:
    """Batch norm of ``x [N, C, ...]`` with its batch statistics (biased variance), built
    from operators whose vmap batching rules are exact to every order."""
    dims = (0, *range(2, x.dim()))
    shape = (1, -1, *([1] * (x.dim() - 2)))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.view(shape) + bias.view(shape)
    return y


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys) that stays exact to
    second order under ``torch.func.vmap`` when it uses batch statistics."""

    def forward(self, x: Tensor) -> Tensor:
        if self.running_mean is None and under_vmap():
            return batch_norm_from_primitives(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that stays exact to second order under ``torch.func.vmap`` when
    it uses batch statistics."""

    def forward(self, x: Tensor) -> Tensor:
        if self.running_mean is None and under_vmap():
            return batch_norm_from_primitives(x, self.weight, self.bias, self.eps)
        return super().forward(x)


# how a layer tells it runs under vmap is a private API: without it, nothing is claimed exact
EXACT_UNDER_VMAP: tuple[type, ...] = (BatchNorm1d, BatchNorm2d) if CAN_TELL else ()
"""Batch-norm layers whose second-order gradients are exact under ``torch.func.vmap``."""
