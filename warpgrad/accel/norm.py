"""Batch norm on channels-last CPU input, as accurate as PyTorch's NCHW kernel, with a second
derivative of its own.

PyTorch's CPU batch-norm kernel for channels-last (NHWC) input sums its batch statistics in
the input's precision, row after row, where the NCHW kernel sums each image's map and adds
the images up in float64. In float32 that is ~1e-5 against ~1e-7 relative error in the
normalised output, and on mostly-blank images (glyphs) it put a 22-27% relative error into
the WarpGrad meta-gradient, against 1e-6 for NCHW (tests). With batch statistics,
:class:`BatchNorm2d` computes them for NHWC input the NCHW kernel's way
(:func:`channels_last_batch_norm`) and leaves the normalisation and the backward pass to
PyTorch's NHWC kernels; layers that update running statistics normalise in NCHW between two
layout copies. Under ``torch.func.vmap`` it is the core layer
(:class:`warpgrad.models.batch_norm.BatchNorm2d`, exact to second order there) in passes
differentiated twice (:data:`~warpgrad.accel.scopes.SECOND_ORDER`), and PyTorch's fused
kernel, exact to first order, elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from warpgrad.accel.autograd import Function
from warpgrad.accel.scopes import SECOND_ORDER
from warpgrad.models import batch_norm


def is_nhwc(x: Tensor) -> bool:
    """A 4-D CPU tensor laid out channels-last only (1x1 maps and one channel are both)."""
    return (x.dim() == 4 and x.device.type == "cpu" and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def channels_last_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                             eps: float) -> Tensor:
    """Batch norm with batch statistics of an NHWC CPU tensor ``x [N, C, H, W]``, as accurate as
    PyTorch's NCHW kernel (see the module docstring); NHWC out. Differentiable to any order."""
    return _ChannelsLastBatchNorm.apply(x, weight, bias, eps)[0]


def _channel_sums(t: Tensor) -> Tensor:
    """``t [N, C, H, W]`` (NHWC memory) summed over N, H and W: ``[C]`` in float64, as the
    NCHW kernel sums its statistics: each image's sum in at least float32 over the
    ``[N, H*W, C]`` view, then the images' in float64."""
    n, c = t.shape[:2]
    rows = t.permute(0, 2, 3, 1).reshape(n, -1, c)
    per_image = torch.promote_types(t.dtype, torch.float32)
    return rows.sum(1, dtype=per_image).sum(0, dtype=torch.float64)


class _ChannelsLastBatchNorm(Function):
    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
        count = x.numel() // x.shape[1]
        per_image = torch.promote_types(x.dtype, torch.float32)
        mean = _channel_sums(x) / count
        var = _channel_sums((x - mean.to(per_image).view(1, -1, 1, 1)).square_()) / count
        stats = weight.dtype if weight is not None else per_image
        mean, var = mean.to(stats), var.to(stats)
        # eval mode: the affine map with these statistics, by the NHWC kernel
        y = torch.ops.aten.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]
        return y, mean, (var + eps).rsqrt()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, ctx.eps = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor, _mean: Tensor, _invstd: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        mask = (needs_x, weight is not None and needs_weight, ctx.has_bias and needs_bias)
        if torch.is_grad_enabled():  # create_graph: this gradient is differentiated again
            gx, gw, gb = _ChannelsLastBatchNormBackward.apply(grad, x, weight, mean, invstd,
                                                              ctx.eps, mask)
        else:  # the training-mode backward (the statistics depend on x)
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, None, None, mean, invstd, True, ctx.eps, list(mask))
        return gx, gw, gb, None


class _ChannelsLastBatchNormBackward(Function):
    """The training-mode backward ``(grad, x, γ) → (grad_x, grad_γ, grad_β)`` of batch norm,
    with a backward of its own: PyTorch's (``batchnorm_double_backward``) is ~30 passes over
    the activations, some of them strided over NHWC memory, and computes γ's gradient even
    where γ is a constant θ; this one is ~17 passes and computes what is asked.

    Per channel, with M elements, x̂ = (x - μ) r, r = 1/√(σ² + ε), and the incoming
    gradients a (for grad_x), b (grad_γ) and c (grad_β); P = Σ a x̂, Q = Σ g x̂,
    A = Σ a g - Σa Σg / M:

    - grad in:  γ r (a - ā - x̂ P/M) + b x̂ + c;
    - x in:     -γ r² (Q a + P g)/M + b r g + x̂ [γ r² (3PQ/M - A)/M - b r Q/M]
      + γ r² (Q ā + P ḡ)/M - b r ḡ;
    - γ in:     r (A - PQ/M).
    """

    @staticmethod
    def forward(grad: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                eps: float, mask: tuple[bool, bool, bool]
                ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return tuple(torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, eps, list(mask)))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        grad, x, weight, mean, invstd, _, _ = inputs
        _, needs_x, needs_weight = ctx.needs_input_grad[:3]
        # the upstream gradient only serves x's and γ's terms (not where x comes from a
        # constant θ and the data, as in the first block at θ_k)
        ctx.save_for_backward(grad if needs_x or needs_weight else None, x, weight, mean,
                              invstd)
        ctx.grad_dtype = grad.dtype
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg_x: Tensor | None, gg_weight: Tensor | None, gg_bias: Tensor | None):
        grad, x, weight, mean, invstd = ctx.saved_tensors
        needs_grad, needs_x, needs_weight = ctx.needs_input_grad[:3]
        count = x.numel() // x.shape[1]
        per_channel = (1, -1, 1, 1)
        r = invstd.double()
        gamma = weight.double() if weight is not None else torch.ones_like(r)
        zero = torch.zeros_like(r)
        b = gg_weight.double() if gg_weight is not None else zero
        c = gg_bias.double() if gg_bias is not None else zero
        x_hat = (x - mean.view(per_channel)) * invstd.view(per_channel)
        work = x_hat.dtype

        def coefficient(v: Tensor) -> Tensor:
            return v.to(work).view(per_channel)

        if gg_x is not None:
            sum_a, p = _channel_sums(gg_x), _channel_sums(gg_x * x_hat)
        else:
            sum_a = p = zero
        sum_g = q = big_a = zero
        if grad is not None:
            sum_g, q = _channel_sums(grad), _channel_sums(grad * x_hat)
            if gg_x is not None:
                big_a = _channel_sums(gg_x * grad) - sum_a * sum_g / count
        d_grad = d_x = d_weight = None
        # in place on fresh products (no op saves them): fewer activation-sized temporaries
        if needs_grad:
            d_grad = x_hat * coefficient(b - gamma * r * p / count)
            d_grad.add_(coefficient(c - gamma * r * sum_a / count))
            if gg_x is not None:
                d_grad.addcmul_(gg_x, coefficient(gamma * r))
            d_grad = d_grad.to(ctx.grad_dtype)
        if needs_x and (gg_x is not None or gg_weight is not None):
            r2 = gamma * r * r / count
            d_x = grad * coefficient(b * r - r2 * p)
            d_x.addcmul_(x_hat, coefficient(r2 * (3 * p * q / count - big_a) - b * r * q / count))
            d_x.add_(coefficient(r2 * (q * sum_a + p * sum_g) / count - b * r * sum_g / count))
            if gg_x is not None:
                d_x.addcmul_(gg_x, coefficient(-r2 * q))
            d_x = d_x.to(x.dtype)
        if needs_weight and weight is not None and gg_x is not None:
            d_weight = (r * (big_a - p * q / count)).to(weight.dtype)
        return d_grad, d_x, d_weight, None, None, None, None


class BatchNorm2d(batch_norm.BatchNorm2d):
    """The core ``BatchNorm2d`` (same parameters, buffers and state-dict keys) that keeps
    channels-last CPU input accurate (see the module docstring).
    :func:`warpgrad.accel.convert` puts it in place of a model's batch norm."""

    def forward(self, x: Tensor) -> Tensor:
        if batch_norm.under_vmap():
            # the fused kernel's batching rule is exact to first order, and faster than the
            # primitives, which a pass differentiated twice needs
            return super().forward(x) if SECOND_ORDER else nn.BatchNorm2d.forward(self, x)
        if is_nhwc(x) and (self.training or self.running_mean is None):  # batch statistics
            if self.running_mean is None:
                return channels_last_batch_norm(x, self.weight, self.bias, self.eps)
            return nn.BatchNorm2d.forward(self, x.contiguous()).contiguous(
                memory_format=torch.channels_last)
        return super().forward(x)
