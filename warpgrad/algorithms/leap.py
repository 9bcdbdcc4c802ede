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
    >>> from warpgrad import MetaLearner, mlp
    >>> from warpgrad.algorithms import Leap
    >>> learner = MetaLearner(mlp(warp=None), F.mse_loss, init=Leap(), steps=10)
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


class _PathLength:
    """Streams over a trajectory, adding each segment's gradient as soon as it closes."""

    def __init__(self, leap: Leap) -> None:
        self.leap = leap
        self.needs_final_loss = leap.loss_dimension
        self.previous: StepRecord | None = None
        self.gradient: Tensor | None = None

    def observe(self, record: StepRecord) -> None:
        if self.previous is not None:
            segment = self._segment(self.previous, record)
            self.gradient = segment if self.gradient is None else self.gradient + segment
        self.previous = record

    def _segment(self, start: StepRecord, end: StepRecord) -> Tensor:
        d_theta = start.theta - end.theta
        squared = d_theta.pow(2).sum()
        if self.leap.loss_dimension:
            d_loss = end.loss - start.loss
            if self.leap.stabilizer:  # a rise in loss counts as a fall (no host sync)
                d_loss = -d_loss.abs()
            d_theta = d_theta - d_loss * start.grad
            squared = squared + d_loss.pow(2)
        if self.leap.norm:
            length = squared.sqrt()
            # a zero-length segment stays zero; a where, not an if: no host-device sync
            d_theta = d_theta / torch.where(length > 0, length, torch.ones_like(length))
        return d_theta
