"""Scopes that tell the accelerated layers what kind of pass they are in.

The accelerated backend opens them around the passes it runs; the layers read them at
forward time:

- :data:`SECOND_ORDER`: the pass's gradient is differentiated again (WarpGrad's exact
  step, MAML's differentiable adaptation, a kept step graph). Convolutions then take a
  backward whose own backward computes only the terms asked for (:mod:`.conv`), and
  max-pooling saves only its argmax (:mod:`.pool`). Elsewhere both stay PyTorch's fused
  kernels, which is what first-order passes want.
- :data:`ARGMAX_ONLY`: a first-order pass whose graph is held as long as a twice-
  differentiated one (the exact step's loss after the step); its max-pooling saves only the
  argmax too.
- :data:`META_BACKWARD_BF16`: open while a bf16 model runs a pass in float32 (WarpGrad's
  step at θ_k). A convolution recorded there under :data:`SECOND_ORDER` runs the
  meta-gradient's backward through the pass in bfloat16 (:func:`meta_backward_now`), the
  step's own gradient in float32.

Why the step stays float32 and its meta-backward need not: rounding the step to bf16 is
what breaks the meta-gradient, while the meta-backward carries the gradient of the loss
after the step, which the bf16 passes have already rounded (docs/performance.md).
"""

from __future__ import annotations

import torch


class Scope:
    """True while any ``with scope:`` block is open (blocks may nest)."""

    def __init__(self) -> None:
        self._depth = 0

    def __enter__(self) -> None:
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1

    def __bool__(self) -> bool:
        return self._depth > 0


SECOND_ORDER = Scope()
ARGMAX_ONLY = Scope()
META_BACKWARD_BF16 = Scope()


def meta_backward_now() -> bool:
    """Whether a backward running now, through a pass recorded inside
    :data:`META_BACKWARD_BF16`, is the meta-gradient's: it builds no graph and runs after
    the block has closed. The step's own gradient is taken inside the block (WarpGrad's
    step) or with ``create_graph`` (a shared adaptation step that is differentiated again);
    either way it stays float32."""
    return not META_BACKWARD_BF16 and not torch.is_grad_enabled()
