"""Conv4's block (3x3 conv → 2x2 max-pool → batch norm → ReLU), run channels-last on the CPU.

PyTorch's CPU max-pool kernel is scalar for NCHW input and vectorised over channels for
channels-last (NHWC) input, several times faster at Conv4's shapes; convolutions are as
fast or faster NHWC, and so is batch norm, which :mod:`~warpgrad.accel.norm` keeps as
accurate as NCHW (docs/performance.md has the figures).

So each block copies its input to NHWC (free for one channel, which has one layout, and for
the previous block's output, which is NHWC already) and runs NHWC throughout; what follows
it (warp layers, the next block) receives NHWC. A flatten before the head copies the last
map back to the NCHW order (nothing to copy at 1x1).

The result is the same: both pooling kernels scan a window in the same order, so they pick
the same element, ties and NaN included, and the convolution and batch norm compute the
same sums (their gradients may add them in another order: ~1e-13 relative in float64).
Tests compare both ways to second order.

It applies to plain autograd and ``torch.func.grad`` on the CPU. Elsewhere
(``torch.func.vmap``, GPUs) the block is an ``nn.Sequential`` on its input's layout.
"""

from __future__ import annotations

from torch import Tensor, nn

from warpgrad.accel.transforms import eager_cpu, to_channels_last


class ConvBlock(nn.Sequential):
    """``nn.Sequential(conv, pool, *rest)`` (the same children and state-dict keys) that runs
    channels-last where the module docstring says: NCHW or NHWC in, NHWC out there."""

    def forward(self, x: Tensor) -> Tensor:
        if channels_last_applies(x):
            x = to_channels_last(x)
        return super().forward(x)


def channels_last_applies(x: Tensor) -> bool:
    """Whether a block on ``x`` runs channels-last, as the module docstring says."""
    return x.dim() == 4 and eager_cpu(x)


def is_conv_block(module: nn.Module) -> bool:
    """A plain ``nn.Sequential`` of (``Conv2d``, ``MaxPool2d``, batch norm, ``ReLU``), as in
    Conv4: every layer keeps the layout it is given, so the block may run channels-last."""
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU)
    return (type(module) is nn.Sequential and len(module) == len(kinds)
            and all(isinstance(m, k) for m, k in zip(module, kinds)))
