"""Reptile (Nichol et al., 2018): move θ_0 towards where adaptation ended.

Its meta-gradient for one task is θ_0 − θ_K, so SGD on θ_0 with step ε interpolates
θ_0 ← θ_0 + ε (θ_K − θ_0). (The original WarpGrad code dropped the last step's update; here θ_K
is the true end of the trajectory.)

Example:
    >>> from warpgrad import MetaLearner, mlp
    >>> from warpgrad.algorithms import Reptile
    >>> learner = MetaLearner(mlp(warp=None), F.mse_loss, init=Reptile(), steps=5)
"""

from __future__ import annotations

from torch import Tensor

from warpgrad.algorithms.base import InitObjective, TaskRun
from warpgrad.engine.adapt import Observer


class Reptile(InitObjective):
    def task_gradient(self, run: TaskRun, observer: Observer | None) -> Tensor:
        return (run.theta0 - run.adaptation.theta).detach()
