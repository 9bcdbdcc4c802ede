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
"""

from __future__ import annotations

from warpgrad._scope import Scope

SECOND_ORDER = Scope()


def second_order() -> Scope:
    """A ``with`` block for passes whose gradient is differentiated again (nestable)."""
    return SECOND_ORDER
