"""Max-pooling that keeps only its argmax, in the smallest integer type that holds it.

For its backward PyTorch's max-pool saves its input and its argmax as int64. The input is
read only for its shape: the gradient is the upstream gradient put back at the argmax. In
Conv4 the pool's input is the first convolution's output, the largest activation of the
network, and the argmax takes twice the bytes of the pooled map. A graph that is
differentiated twice keeps both until its second backward: MAML keeps them for every
adaptation step, an exact WarpGrad buffer point for its inner pass.

With non-overlapping windows (stride = kernel, no padding or dilation) every input element
is in one window at most, so the backward is ``max_unpool2d`` of the argmax: the same
values. :class:`MaxPool2d` saves the argmax as int16 (int32 for planes of 2^15 positions or
more) and nothing else. The backward's own backward is a gather, as PyTorch's is, but over
positions with the channels contiguous (``[N, H * W, C]``, a view of a channels-last map)
rather than over planes. The pooled values and the argmax come from PyTorch's kernel, so
ties and NaN pick the same element.

It applies where :mod:`~warpgrad.accel.conv`'s convolution does (inside
:data:`~warpgrad.accel.scopes.SECOND_ORDER`, under plain autograd or ``torch.func.grad`` on
the CPU), and in the first-order pass inside :data:`~warpgrad.accel.scopes.ARGMAX_ONLY`,
which the exact WarpGrad step opens for its loss after the step (that pass's graph is held
while the step's is). Other first-order passes free their graph at once and would pay the
Python-level function's cost for little. Elsewhere (``vmap``, GPUs, overlapping windows) it
is ``nn.MaxPool2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from warpgrad.accel.autograd import Function
from warpgrad.accel.scopes import ARGMAX_ONLY, SECOND_ORDER
from warpgrad.accel.transforms import eager_cpu


def max_pool2d(x: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """``F.max_pool2d(x, kernel_size)`` (stride = kernel, no padding), saving only the argmax
    for the backward where the module docstring says. ``x [N, C, H, W]``."""
    kernel = _pair(kernel_size)
    if not _applies(x):
        return F.max_pool2d(x, kernel)
    return _MaxPool2d.apply(x, kernel)[0]


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools with :func:`max_pool2d` where the windows do not overlap
    (stride = kernel, no padding, dilation or ceil mode)."""

    def forward(self, x: Tensor) -> Tensor:
        # the scope test first: every first-order pass comes through here
        if _applies(x) and self._windows_apart():
            return _MaxPool2d.apply(x, _pair(self.kernel_size))[0]
        return super().forward(x)

    def _windows_apart(self) -> bool:
        return (_pair(self.kernel_size) == _pair(self.stride) and _pair(self.padding) == (0, 0)
                and _pair(self.dilation) == (1, 1) and not self.ceil_mode
                and not self.return_indices)


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _applies(x: Tensor) -> bool:
    return ((bool(SECOND_ORDER) or bool(ARGMAX_ONLY)) and x.dim() == 4
            and x.requires_grad and torch.is_grad_enabled() and eager_cpu(x))


def _index_dtype(height: int, width: int) -> torch.dtype:
    return torch.int16 if height * width <= torch.iinfo(torch.int16).max else torch.int32


class _MaxPool2d(Function):
    """``x [N, C, H, W] → (pooled [N, C, H / k, W / k], argmax)``, the argmax (the position
    in its ``H x W`` plane) in :func:`_index_dtype` and not differentiable."""

    @staticmethod
    def forward(x: Tensor, kernel: tuple[int, int]) -> tuple[Tensor, Tensor]:
        pooled, argmax = torch.ops.aten.max_pool2d_with_indices(x, list(kernel), list(kernel))
        return pooled, argmax.to(_index_dtype(*x.shape[-2:]))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _ = inputs
        _, argmax = output
        ctx.mark_non_differentiable(argmax)
        ctx.save_for_backward(argmax)
        ctx.size = tuple(x.shape[-2:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad: Tensor | None, _: None):
        if grad is None:
            return None, None
        (argmax,) = ctx.saved_tensors
        return _MaxUnpool2d.apply(grad, argmax, ctx.size), None


class _MaxUnpool2d(Function):
    """``(grad [N, C, h, w], argmax, (H, W)) → [N, C, H, W]``: ``grad`` put at ``argmax``,
    zero elsewhere (the pool's gradient when windows do not overlap)."""

    @staticmethod
    def forward(grad: Tensor, argmax: Tensor, size: tuple[int, int]) -> Tensor:
        return torch.ops.aten.max_unpool2d(grad, argmax.long(), list(size))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, argmax, _ = inputs
        ctx.save_for_backward(argmax)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad: Tensor | None):
        if grad is None:
            return None, None, None
        (argmax,) = ctx.saved_tensors
        # the unpooling is linear in its input, so this reads ``grad`` back at the argmax;
        # gathered over positions [N, H * W, C] with the channels contiguous (channels-last
        # maps: a view), faster than over planes [N, C, H * W]
        n, c, h, w = argmax.shape
        planes = grad.permute(0, 2, 3, 1).reshape(n, -1, c)
        where = argmax.long().permute(0, 2, 3, 1).reshape(n, -1, c)
        return planes.gather(1, where).view(n, h, w, c).permute(0, 3, 1, 2), None, None
