"""Reptile (Nichol et al., 2018): move θ_0 towards where adaptation ended.

Its meta-gradient for one task is θ_0 − θ_K, so SGD on θ_0 with step ε interpolates
θ_0 ← θ_0 + ε (θ_K − θ_0). (The original WarpGrad code dropped the last step's update; here θ_K
is the true end of the trajectory.)

Example:
    >>> import torch, torch.nn.functional as F
    >>> from warpgrad import MetaLearner, Reptile, mlp, sine_tasks
    >>> model = mlp(warp=None)
    >>> learner = MetaLearner(model, F.mse_loss, init=Reptile(), steps=5, inner_lr=0.01)
    >>> before = model.init_theta().detach().clone()
    >>> _ = learner.meta_step(sine_tasks(4, torch.Generator().manual_seed(0)))
    >>> bool((model.init_theta() != before).any())  # θ_0 moved towards the θ_K
    True
"""

from __future__ import annotations

from torch import Tensor

from warpgrad.algorithms.base import InitObjective, TaskRun
from warpgrad.engine.adapt import Observer


class Reptile(InitObjective):
    def task_gradient(self, run: TaskRun, observer: Observer | None) -> Tensor:
        return (run.theta0 - run.adaptation.theta).detach()
