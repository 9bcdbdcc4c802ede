"""Conv4's block (3x3 conv → 2x2 max-pool → batch norm → ReLU), convolved and pooled
channels-last on the CPU.

PyTorch 2.13's CPU max-pool kernel is scalar for NCHW input and vectorised over channels
for channels-last (NHWC) input: 2x2 pooling of Conv4's largest activation (``[128, 64, 28,
28]`` at the multi-shot Omniglot protocol) takes ~18 ms NCHW and ~3 ms NHWC on 2 cores, and
``[128, 64, 14, 14]`` ~5 ms against 0.3 ms. The NCHW kernel was ~20% of a warped Conv4
meta-iteration. Convolutions are as fast or faster NHWC (the first block's, with one input
channel, 3.3 ms NCHW against 2.0 ms).

So each block copies its input to NHWC (free for one channel, which has one layout), the
convolution writes NHWC and the fast kernel pools it; the pooled map, a quarter of the
size, goes back to NCHW for batch norm, whose NHWC CPU kernel loses precision (see
:mod:`warpgrad.models._norm`); in the backward pass that copy sends the gradient back
NHWC. (To autograd a layout copy is the identity, and the NHWC max-pool backward takes a
slow path for an NCHW gradient: ~11 ms against ~3 ms + ~1 ms for the copy at ``[128, 64,
14, 14]``.)

The result is the same: both pooling kernels scan a window in the same order, so they pick
the same element, ties and NaN included, and the convolution computes the same sums (its
gradients may add them in another order: ~1e-13 relative in float64). Tests compare both
ways to second order.

It applies to plain autograd and ``torch.func.grad`` on the CPU. Elsewhere
(``torch.func.vmap``, ``torch.compile``, which plans its own layouts, GPUs, a model already
channels-last) the block is an ``nn.Sequential``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from warpgrad.models._transforms import outside_all_but_grad
from warpgrad.models.warped import to_channels_last

CHANNELS_LAST = True
"""Whether :class:`ConvBlock` may run channels-last (tests compare both ways)."""


class ConvBlock(nn.Sequential):
    """``nn.Sequential(conv, pool, *rest)`` (the same children and state-dict keys) that runs
    ``conv`` and ``pool`` channels-last where the module docstring says; NCHW in and out."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._channels_last(x):
            return super().forward(x)
        conv, pool, *rest = self
        x = _to_nchw(pool(conv(to_channels_last(x))))
        for layer in rest:
            x = layer(x)
        return x

    def _channels_last(self, x: Tensor) -> bool:
        return (len(self) > 1 and isinstance(self[0], nn.Conv2d)
                and isinstance(self[1], nn.MaxPool2d) and not self[1].return_indices
                and channels_last_applies(x))


def channels_last_applies(x: Tensor) -> bool:
    """Whether a conv → pool on ``x`` runs channels-last, as the module docstring says."""
    return (CHANNELS_LAST and x.device.type == "cpu" and x.dim() == 4
            and x.stride(1) != 1  # not NHWC already (a channels-last model)
            and not torch.compiler.is_compiling() and outside_all_but_grad())


def _to_nchw(y: Tensor) -> Tensor:
    """``y.contiguous()`` (NHWC ``y``) whose gradient goes back NHWC."""
    return _ToNCHW.apply(y)


class _ToNCHW(torch.autograd.Function):
    @staticmethod
    def forward(y: Tensor) -> Tensor:
        return y.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)
