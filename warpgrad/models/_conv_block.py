"""Conv4's block (3x3 conv → 2x2 max-pool → batch norm → ReLU), run channels-last on the CPU.

PyTorch 2.13's CPU max-pool kernel is scalar for NCHW input and vectorised over channels
for channels-last (NHWC) input: 2x2 pooling of Conv4's largest activation (``[128, 64, 28,
28]`` at the multi-shot Omniglot protocol) takes ~18 ms NCHW and ~3 ms NHWC on 2 cores, and
``[128, 64, 14, 14]`` ~5 ms against 0.3 ms. The NCHW kernel was ~20% of a warped Conv4
meta-iteration. Convolutions are as fast or faster NHWC, and so is batch norm, which
:mod:`warpgrad.models._norm` keeps as accurate as NCHW.

So each block copies its input to NHWC (free for one channel, which has one layout, and for
the previous block's output, which is NHWC already) and runs NHWC throughout; what follows
it (warp layers, the next block) receives NHWC. The flatten before the head copies the last
map back to the NCHW order (nothing to copy at 1x1).

The result is the same: both pooling kernels scan a window in the same order, so they pick
the same element, ties and NaN included, and the convolution and batch norm compute the
same sums (their gradients may add them in another order: ~1e-13 relative in float64).
Tests compare both ways to second order.

It applies to plain autograd and ``torch.func.grad`` on the CPU. Elsewhere
(``torch.func.vmap``, ``torch.compile``, which plans its own layouts, GPUs) the block is an
``nn.Sequential`` on its input's layout.
"""

from __future__ import annotations

from torch import Tensor, nn

from warpgrad.models._transforms import eager_cpu
from warpgrad.models.warped import to_channels_last

CHANNELS_LAST = True
"""Whether :class:`ConvBlock` may run channels-last (tests compare both ways)."""


class ConvBlock(nn.Sequential):
    """``nn.Sequential(conv, pool, *rest)`` (the same children and state-dict keys) that runs
    channels-last where the module docstring says: NCHW or NHWC in, NHWC out there."""

    def forward(self, x: Tensor) -> Tensor:
        if channels_last_applies(x):
            x = to_channels_last(x)
        return super().forward(x)


def channels_last_applies(x: Tensor) -> bool:
    """Whether a block on ``x`` runs channels-last, as the module docstring says."""
    return CHANNELS_LAST and x.dim() == 4 and eager_cpu(x)
