"""The inner optimiser: SGD (optionally with momentum) on the flat task-parameter vector.

Functional: ``step`` returns the new θ and optimiser state instead of mutating them, so the
same code serves detached adaptation, differentiable adaptation (MAML) and the one
differentiable step of WarpGrad's meta-objective. The learning rate and momentum can be
meta-learned (per run, per parameter tensor, or per parameter as in Meta-SGD).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from warpgrad.models.warped import ParamSpec

Granularity = Literal["global", "tensor", "element"]


class InnerSGD(nn.Module):
    """``v ← μ v + g;  θ ← θ − α ⊙ v`` (PyTorch's SGD convention; plain SGD when μ = 0).

    Args:
        spec: layout of θ (``WarpedModel.task_spec``).
        lr: initial learning rate α.
        momentum: initial momentum μ (0 disables the velocity state entirely).
        learn_lr: make α a meta-learned parameter.
        learn_momentum: make μ a meta-learned parameter.
        granularity: shape of α and μ when learned: one scalar (``"global"``), one per
            parameter tensor (``"tensor"``, the original WarpGrad code) or one per entry of θ
            (``"element"``, Meta-SGD).
        dtype: dtype of α and μ (default: PyTorch's default dtype); match the model's.
    """

    def __init__(
        self,
        spec: ParamSpec,
        lr: float = 0.1,
        momentum: float = 0.0,
        *,
        learn_lr: bool = False,
        learn_momentum: bool = False,
        granularity: Granularity = "tensor",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"inner learning rate must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        sizes = {"global": 1, "tensor": len(spec.names), "element": spec.numel}
        if granularity not in sizes:
            raise ValueError(f"granularity must be one of {list(sizes)}, got {granularity!r}")
        self.granularity = granularity
        self.has_state = momentum > 0 or learn_momentum
        n = sizes[granularity]
        lr_t = torch.full((n,), float(lr), dtype=dtype)
        mom_t = torch.full((n,), float(momentum), dtype=dtype)
        if learn_lr:
            self.lr = nn.Parameter(lr_t)
        else:
            self.register_buffer("lr", lr_t)
        if learn_momentum:
            self.momentum = nn.Parameter(mom_t)
        else:
            self.register_buffer("momentum", mom_t)
        if granularity == "tensor":
            self.register_buffer("segments", spec.segment_ids(), persistent=False)

    def _per_entry(self, value: Tensor) -> Tensor:
        if self.granularity == "tensor":
            return value[self.segments]
        return value  # [1] broadcasts; [P] is already per entry

    def init_state(self, theta: Tensor) -> Tensor | None:
        """The velocity ``[P]`` before the first step (zeros), or ``None`` without momentum."""
        return torch.zeros_like(theta) if self.has_state else None

    def step(self, theta: Tensor, grad: Tensor, state: Tensor | None
             ) -> tuple[Tensor, Tensor | None]:
        """One update. ``theta``, ``grad``, ``state``: ``[P]`` (or ``[n, P]`` under vmap).

        Differentiable in θ, g, the state and the meta-learned α, μ."""
        if state is not None:
            state = self._per_entry(self.momentum) * state + grad
            return theta - self._per_entry(self.lr) * state, state
        return theta - self._per_entry(self.lr) * grad, None
