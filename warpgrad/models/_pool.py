"""Max-pooling whose CPU forward runs on the channels-last kernel.

PyTorch 2.13's CPU max-pool forward on NCHW tensors is an order of magnitude slower than on
channels-last ones (2x2 pooling of a [128, 64, 28, 28] Conv4 activation on 2 cores: ~12-17
ms against ~1.6 ms), and was ~17% of an eager Conv4 step with warps. Both kernels scan a
window the same way, so they give the same values and the same indices (ties and NaN
included; tests). This layer pools an NCHW input through the channels-last kernel and
backpropagates through the NCHW backward kernel with those indices: the same computation,
gradients and second derivatives included, faster.

Only plain autograd takes that path. Under ``torch.func`` transforms (vmap, grad) and
``torch.compile`` (which generates its own pooling code), on GPUs and for channels-last or
other input, it is ``nn.MaxPool2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from warpgrad.models.warped import _in_functorch_transform


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments; no parameters or buffers) with the faster CPU
    forward described in the module docstring."""

    def forward(self, x: Tensor) -> Tensor:
        if (self.return_indices or self.ceil_mode or self.padding not in (0, (0, 0))
                or self.dilation not in (1, (1, 1))):
            return super().forward(x)
        return max_pool2d(x, self.kernel_size, self.stride)


def max_pool2d(x: Tensor, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = None) -> Tensor:
    """``F.max_pool2d(x, kernel_size, stride)`` (no padding), through the channels-last
    kernel where the module docstring says."""
    stride = kernel_size if stride is None else stride
    if (x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and x.is_floating_point()
            and not torch.compiler.is_compiling() and not _in_functorch_transform()):
        return _ChannelsLastForward.apply(x, kernel_size, stride)[0]
    return F.max_pool2d(x, kernel_size, stride)


class _ChannelsLastForward(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, kernel_size, stride) -> tuple[Tensor, Tensor]:
        pooled, indices = F.max_pool2d(x.contiguous(memory_format=torch.channels_last),
                                       kernel_size, stride, return_indices=True)
        # clone, not contiguous(): a [B, C, 1, 1] result counts as contiguous with
        # channels-last strides, and later kernels (batch norm) would take their
        # channels-last paths, whose sums round differently
        return (pooled.clone(memory_format=torch.contiguous_format),
                indices.clone(memory_format=torch.contiguous_format))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, kernel_size, stride = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(x, indices)
        ctx.kernel_size, ctx.stride = _pair(kernel_size), _pair(stride)

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_indices: Tensor | None):
        x, indices = ctx.saved_tensors
        # an aten op with a derivative of its own: double backward works (MAML)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, ctx.kernel_size, ctx.stride, [0, 0], [1, 1], False, indices)
        return grad_x, None, None


def _pair(value) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)
