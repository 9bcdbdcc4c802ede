"""A scope for the passes whose gradient is itself differentiated (``create_graph``).

Inside it some of the library's layers compute their derivatives differently, for what a
gradient of a gradient needs:

- batch norm under ``torch.func.vmap`` is built from primitive operators, whose batching
  rules are exact to every order (:mod:`warpgrad.models._norm`);
- convolutions take a backward whose own backward computes only the terms asked for
  (:mod:`warpgrad.models._conv`);
- max-pooling saves only its argmax, as int16 (:mod:`warpgrad.models._pool`).

Outside it they keep PyTorch's fused kernels and nothing more, which is what first-order
passes want. The exact WarpGrad step, MAML's differentiable adaptation and adaptation steps
that keep their graph open it.

A second scope, :func:`meta_backward_in_bf16`, is for a bf16 model's float32 passes (WarpGrad's
step at θ_k): their own gradient stays float32, and the backward through them that builds
no graph (the meta-gradient's) runs its convolutions in bfloat16, as the model's other passes
do.
"""

from __future__ import annotations

import torch

from warpgrad._scope import Scope

SECOND_ORDER = Scope()

META_BACKWARD_BF16 = Scope()
"""Open while a bf16 model runs a pass in float32 (``WarpedModel.full_precision``)."""


def second_order() -> Scope:
    """A ``with`` block for passes whose gradient is differentiated again (nestable)."""
    return SECOND_ORDER


def meta_backward_in_bf16() -> Scope:
    """A ``with`` block around a float32 forward of a bf16 model (nestable). The second-order
    scope's convolutions recorded in it (:mod:`~warpgrad.models._conv`) run a backward that
    comes after the block and builds no graph, the meta-gradient's backward through the
    pass, in bfloat16; a backward inside the block or one that builds a graph, such as the
    step's own gradient, stays float32 (:func:`meta_backward_now`).

    Rounding the step to bf16 is what breaks the meta-gradient (a 79% error at the
    multi-shot protocol with the whole step in bf16; up to 26% more error at θ_0 with only
    its gradient's convolutions in bf16), so the step stays float32. The meta-gradient's
    backward carries the gradient of the loss after the step, which the bf16 passes have
    already rounded: in bf16 it leaves the error against float64 where it was (relative
    error 0.2089 against 0.2090 with Conv4-64 on a glyph batch of 128, within 2e-4 at nine
    points of three tasks) and takes 11-13% off an exact point (BENCHMARKS.md)."""
    return META_BACKWARD_BF16


def meta_backward_now() -> bool:
    """Whether a backward running now, through a pass recorded inside
    :func:`meta_backward_in_bf16`, is the meta-gradient's: it builds no graph and runs after
    the block has closed. The step's own gradient is taken inside the block (WarpGrad's
    step) or with ``create_graph`` (a shared adaptation step that is differentiated again);
    either way it stays float32."""
    return not META_BACKWARD_BF16 and not torch.is_grad_enabled()
