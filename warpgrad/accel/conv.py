"""2-D convolution whose second derivative computes only the terms that are asked for.

PyTorch's double backward of a convolution (``_convolution_double_backward``) does not look
at which of the convolution's inputs need a gradient: given the gradients of both
gradients, it always computes the gradient for the input and the one for the weight. In
WarpGrad's exact meta-gradient (and MAML's), differentiated in φ at a constant θ_k, two of
them are thrown away: the first layer's input is the data, which needs no gradient, and the
task layers' weights are θ_k, a constant. It also computes the weight gradient it keeps
(the warp layers', φ) as a convolution of transposed tensors, which runs at about half the
speed of the weight-gradient kernel (docs/performance.md). :func:`conv2d` is ``F.conv2d``
with a backward that is itself an :class:`torch.autograd.Function`, whose backward computes
only what its inputs need, with the convolution kernels. The values are the same sums,
perhaps in another order (equal to PyTorch's to 1e-12 in float64, tests).

It applies to passes whose gradient is differentiated again, inside
:data:`~warpgrad.accel.scopes.SECOND_ORDER` (elsewhere its two Python-level functions cost
more than they save), and where the CPU paths apply: plain autograd and
``torch.func.grad`` on the CPU. Elsewhere (first-order passes, ``vmap``, GPUs) it is
``F.conv2d``.

Under a bf16 model WarpGrad's step runs in float32, and a convolution recorded there runs
the meta-gradient's backward through it in bfloat16, the step's own gradient in float32
(:data:`~warpgrad.accel.scopes.META_BACKWARD_BF16`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from warpgrad.accel.autograd import Function
from warpgrad.accel.scopes import META_BACKWARD_BF16, SECOND_ORDER, meta_backward_now
from warpgrad.accel.transforms import eager_cpu

_Pair = tuple[int, int]


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: _Pair = (1, 1),
           padding: _Pair = (0, 0), dilation: _Pair = (1, 1), groups: int = 1) -> Tensor:
    """``F.conv2d`` (zero padding given as numbers), differentiable to any order, whose
    gradient of a gradient computes only the terms its inputs need (see the module
    docstring). ``x [N, C_in, H, W]``, ``weight [C_out, C_in / groups, kH, kW]``."""
    if not _applies(x):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        # what autocast does for F.conv2d: a differentiable cast of float tensors other than
        # float64, then the convolution
        dtype = torch.get_autocast_dtype(device)

        def cast(t: Tensor) -> Tensor:
            return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t

        x, weight = cast(x), cast(weight)
        bias = None if bias is None else cast(bias)
        with torch.autocast(device, enabled=False):
            return _Conv2d.apply(x, weight, bias, stride, padding, dilation, groups)
    return _Conv2d.apply(x, weight, bias, stride, padding, dilation, groups)


def _applies(x: Tensor) -> bool:
    return bool(SECOND_ORDER) and torch.is_grad_enabled() and eager_cpu(x)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (the same parameters and state-dict keys) that convolves with
    :func:`conv2d` where it applies; other padding modes and string padding as before.
    :func:`warpgrad.accel.convert` puts it in place of a model's ``nn.Conv2d``."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class _Conv2d(Function):
    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: _Pair,
                padding: _Pair, dilation: _Pair, groups: int) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, *ctx.conv = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.meta_bf16 = bool(META_BACKWARD_BF16) and x.dtype == torch.float32
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad: Tensor | None):
        if grad is None:
            return (None,) * 7
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        mask = (needs_x, needs_weight, ctx.has_bias and needs_bias)
        if ctx.meta_bf16 and meta_backward_now():  # no graph: the kernel, not the function
            grads = _in_bf16(_Conv2dBackward.forward, grad, x, weight, mask, True, *ctx.conv)
        else:
            grads = _Conv2dBackward.apply(grad, x, weight, mask, ctx.meta_bf16, *ctx.conv)
        return *grads, None, None, None, None


class _Conv2dBackward(Function):
    """``(grad, x, weight) → (grad_x, grad_weight, grad_bias)`` of a convolution; outputs
    left out of ``mask`` are ``None``."""

    @staticmethod
    def forward(grad: Tensor, x: Tensor, weight: Tensor, mask: tuple[bool, bool, bool],
                meta_bf16: bool, stride: _Pair, padding: _Pair, dilation: _Pair, groups: int
                ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        bias_sizes = [weight.shape[0]] if mask[2] else None
        return tuple(torch.ops.aten.convolution_backward(
            grad, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
            list(mask)))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        grad, x, weight, _, ctx.meta_bf16, *ctx.conv = inputs
        _, needs_x, needs_weight = ctx.needs_input_grad[:3]
        # the upstream gradient only serves x's and the weight's terms: for the first layer
        # at a constant θ (neither needs one) it would be an activation kept for nothing
        ctx.save_for_backward(grad if needs_x or needs_weight else None, x, weight)
        ctx.grad_shape = grad.shape
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg_x: Tensor | None, gg_weight: Tensor | None, gg_bias: Tensor | None):
        grad, x, weight = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):  # in the saved tensors' dtype
            if ctx.meta_bf16 and meta_backward_now():
                return _in_bf16(_Conv2dBackward._backward, ctx, grad, x, weight, gg_x,
                                gg_weight, gg_bias)
            return _Conv2dBackward._backward(ctx, grad, x, weight, gg_x, gg_weight, gg_bias)

    @staticmethod
    def _backward(ctx, grad: Tensor | None, x: Tensor, weight: Tensor, gg_x: Tensor | None,
                  gg_weight: Tensor | None, gg_bias: Tensor | None):
        stride, padding, dilation, groups = ctx.conv
        needs_grad, needs_x, needs_weight = ctx.needs_input_grad[:3]
        d_grad = d_x = d_weight = None
        if needs_grad:  # the convolution is linear in (x, weight, bias) separately
            if gg_x is not None:
                d_grad = F.conv2d(gg_x, weight, None, stride, padding, dilation, groups)
            if gg_weight is not None:
                term = F.conv2d(x, gg_weight, None, stride, padding, dilation, groups)
                # in place: one activation-sized tensor fewer at the peak (no op saved it)
                d_grad = term if d_grad is None else d_grad.add_(term)
            if gg_bias is not None:
                term = gg_bias.view(1, -1, 1, 1)
                d_grad = term.expand(ctx.grad_shape) if d_grad is None else d_grad.add_(term)
        if needs_x and gg_weight is not None:  # ⟨grad, conv(x, gg_weight)⟩ in x
            d_x = torch.ops.aten.convolution_backward(
                grad, x, gg_weight, None, stride, padding, dilation, False, [0, 0], groups,
                [True, False, False])[0]
        if needs_weight and gg_x is not None:  # ⟨grad, conv(gg_x, weight)⟩ in the weight
            d_weight = torch.ops.aten.convolution_backward(
                grad, gg_x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                [False, True, False])[1]
        return d_grad, d_x, d_weight, None, None, None, None, None, None


def _in_bf16(fn, *args):
    """``fn`` on ``args`` with their float32 tensors in bfloat16, its tensors back in
    float32 (the dtype autograd expects of the gradients)."""
    def low(a):
        return a.to(torch.bfloat16) if isinstance(a, Tensor) and a.dtype == torch.float32 else a

    out = fn(*(low(a) for a in args))
    return tuple(t.float() if isinstance(t, Tensor) else t for t in out)
