"""Leap (Flennerhag et al., ICLR 2019): meta-learn θ_0 to shorten the adaptation path.

The path is γ_k = (θ_k, f(θ_k)) on the task's loss surface. Holding each segment's end point
fixed, the gradient of its length with respect to its start point gives one task's
meta-gradient

    Σ_k [ (θ_k − θ_{k+1}) − Δf_k ∇f(θ_k) ] / ‖γ_{k+1} − γ_k‖,    Δf_k = f(θ_{k+1}) − f(θ_k),

with ``loss_dimension=False`` dropping the Δf terms (the "simplified Leap" of the original
WarpGrad code, θ_0.grad = Σ_k (θ_k − θ_{k+1}) / ‖θ_k − θ_{k+1}‖) and ``norm=False`` using
the energy (squared length) instead of the length, i.e. no division. The stabiliser replaces
an increase of the loss (Δf > 0) by −Δf, as in the original Leap code. f is the training
batch loss at each step; one extra forward pass gives f(θ_K) for the last segment.

Example:
    >>> import torch, torch.nn.functional as F
    >>> from warpgrad import Leap, MetaLearner, mlp, sine_tasks
    >>> learner = MetaLearner(mlp(warp=None), F.mse_loss, init=Leap(), steps=10, inner_lr=0.01)
    >>> stats = learner.meta_step(sine_tasks(4, torch.Generator().manual_seed(0)))
    >>> stats["adapt_loss_last"] < stats["adapt_loss_first"]
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from warpgrad.algorithms.base import InitObjective, TaskRun
from warpgrad.engine.adapt import Observer, StepRecord


class Leap(InitObjective):
    """Args: ``loss_dimension`` (include f in the path), ``norm`` (length, not energy),
    ``stabilizer`` (never reward a loss increase)."""

    def __init__(self, loss_dimension: bool = True, norm: bool = True,
                 stabilizer: bool = True) -> None:
        self.loss_dimension = loss_dimension
        self.norm = norm
        self.stabilizer = stabilizer

    def observer(self) -> _PathLength:
        return _PathLength(self)

    def task_gradient(self, run: TaskRun, observer: Observer | None) -> Tensor:
        assert isinstance(observer, _PathLength)
        if observer.gradient is None:  # zero steps: no path
            return torch.zeros_like(run.theta0).detach()
        return observer.gradient


WINDOW_BYTES = 8_000_000
"""How much trajectory a Leap observer holds before it sums the segments in it: the
segments are computed together, a window at a time, so memory stays bounded for any K."""


class _PathLength:
    """Streams over a trajectory, summing the segments a window of points at a time.

    ``gradient`` ``[P]`` is the sum of every closed segment's gradient (``None`` before the
    first segment closes)."""

    def __init__(self, leap: Leap) -> None:
        self.leap = leap
        self.needs_final_loss = leap.loss_dimension
        self._thetas: list[Tensor] = []
        self._losses: list[Tensor] = []
        self._grads: list[Tensor] = []
        self._window = 0
        self._sum: Tensor | None = None

    @property
    def gradient(self) -> Tensor | None:
        self._close_segments()
        return self._sum

    def observe(self, record: StepRecord) -> None:
        if not self._window:
            per_point = record.theta.numel() * record.theta.element_size()
            per_point *= 2 if self.leap.loss_dimension else 1
            self._window = max(1, WINDOW_BYTES // per_point)
        self._thetas.append(_owned(record.theta))
        if self.leap.loss_dimension:
            self._losses.append(record.loss)
            if record.grad is not None:
                self._grads.append(_owned(record.grad))
        if len(self._thetas) > self._window:
            self._close_segments()

    def _close_segments(self) -> None:
        """Adds the segments between the held points; keeps the last point, where the next
        segment starts."""
        count = len(self._thetas) - 1
        if count < 1:
            return
        thetas = torch.stack(self._thetas)  # [count + 1, P]
        d_theta = thetas[:-1] - thetas[1:]
        squared = d_theta.pow(2).sum(1)
        if self.leap.loss_dimension:
            losses = torch.stack(self._losses)
            d_loss = losses[1:] - losses[:-1]
            if self.leap.stabilizer:  # a rise in loss counts as a fall
                d_loss = -d_loss.abs()
            d_theta = d_theta - d_loss[:, None] * torch.stack(self._grads[:count])
            squared = squared + d_loss.pow(2)
        if self.leap.norm:
            length = squared.sqrt()
            # a zero-length segment stays zero
            d_theta = d_theta / torch.where(length > 0, length, 1.0)[:, None]
        total = d_theta.sum(0)
        self._sum = total if self._sum is None else self._sum + total
        self._thetas, self._losses = self._thetas[-1:], self._losses[-1:]
        self._grads = self._grads[count:]


def _owned(t: Tensor) -> Tensor:
    """``t``, or a copy where it is a view into a larger tensor (a row of a caller's stacked
    trajectory), which the caller may reuse and holding would keep whole."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.clone()
    return t
