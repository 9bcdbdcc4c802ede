"""Batch norm that stays exact where PyTorch's fused kernel does not.

Two fixes, each a drop-in subclass (same parameters, buffers and state-dict keys):

- Channels-last on the CPU. PyTorch's CPU batch-norm kernel for channels-last (NHWC) input
  gathers its statistics in a way that loses precision when a channel's mean is large
  against its spread, which conv outputs of mostly-blank images are: on the Conv4/glyph
  protocol it put a 27% relative error into the WarpGrad meta-gradient, against 1e-6 for
  NCHW (BENCHMARKS.md). :class:`BatchNorm2d` normalises such input in the NCHW layout and
  hands it back channels-last, so the channels-last switch buys its speed from the
  convolutions and pooling only, never from accuracy.
- Second order under ``torch.func.vmap``. The batching rule of the fused kernel's backward
  is wrong for second-order gradients (pytorch/functorch#534): the exact WarpGrad
  meta-gradient of several points in one vmap came out 2.3e-3 off the one-point-at-a-time
  one in float64. Inside a vmap, with batch statistics, and within :func:`second_order`
  (which the exact objective opens), these layers compute batch norm from primitive
  operators (mean, variance, scale, shift), whose batching rules are exact to every order
  (1e-14 there); everywhere else, first-order vmaps included, they run the fused kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from warpgrad._scope import Scope
from warpgrad.models._transforms import CAN_TELL, under_vmap


def _is_nhwc(x: Tensor) -> bool:
    return (x.dim() == 4 and x.device.type == "cpu" and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


_SECOND_ORDER = Scope()


def second_order() -> Scope:
    """A ``with`` block inside which vmapped batch norm of the library's layers is built from
    primitive operators, so that a gradient of its gradient is exact."""
    return _SECOND_ORDER


class _PrimitiveUnderVmap:
    """Batch norm with batch statistics from primitive operators while vmapped within
    :func:`second_order`."""

    eps: float
    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor | None

    def _primitive(self) -> bool:
        return self.running_mean is None and bool(_SECOND_ORDER) and under_vmap()

    def _batch_norm_from_primitives(self, x: Tensor) -> Tensor:
        dims = (0, *range(2, x.dim()))
        shape = (1, -1, *([1] * (x.dim() - 2)))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class BatchNorm2d(_PrimitiveUnderVmap, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalises channels-last CPU input in the NCHW layout (and
    returns it channels-last), and uses primitive operators for second order under
    ``torch.func.vmap``."""

    def forward(self, x: Tensor) -> Tensor:
        if self._primitive():
            return self._batch_norm_from_primitives(x)
        if _is_nhwc(x):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class BatchNorm1d(_PrimitiveUnderVmap, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that uses primitive operators for second order under
    ``torch.func.vmap``."""

    def forward(self, x: Tensor) -> Tensor:
        if self._primitive():
            return self._batch_norm_from_primitives(x)
        return super().forward(x)


# how a layer tells it runs under vmap is a private API: without it, nothing is claimed exact
EXACT_UNDER_VMAP = (BatchNorm1d, BatchNorm2d) if CAN_TELL else ()
"""Batch-norm layers whose second-order gradients are exact under ``torch.func.vmap``."""
