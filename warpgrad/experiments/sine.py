"""Sine regression (Finn et al., 2017, as the WarpGrad paper uses it).

y = A sin(x − b), A ~ U[0.1, 5], b ~ U[0, π], x ~ U[-5, 5], 10-shot; an MLP 40-40 with a
linear warp after each hidden layer for the warped methods. Every method starts from the same
seed; all are scored by the post-adaptation MSE on the same held-out tasks (mean, 95% CI).

``warpgrad train sine`` runs it; see :mod:`warpgrad.experiments.run` for the run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from warpgrad import accel
from warpgrad.algorithms import METHODS, MetaLearner, WarpGrad, make_learner
from warpgrad.experiments.schemas import SineConfig  # re-exported; torch-free
from warpgrad.models import mlp
from warpgrad.tasks import Task, sine_tasks


class SineExperiment:
    """The :class:`~warpgrad.experiments.run.Experiment` of a :class:`SineConfig`."""

    name = "sine"
    metric = "test_loss"
    higher_is_better = False

    def __init__(self, config: SineConfig) -> None:
        self.config = config
        self.methods = config.methods
        self.iterations, self.checkpoint_every = config.iterations, config.checkpoint_every
        self.seed = config.seed
        self.eval_steps = None  # the meta-training budget

    def build_learner(self, method: str) -> MetaLearner:
        c = self.config
        torch.manual_seed(c.seed)
        spec = METHODS[method]
        model = mlp(1, 1, hidden=tuple(c.hidden), warp="linear" if spec.needs_warps else None)
        if c.accelerate:
            model = accel.convert(model)
        warp = (WarpGrad(c.warp_variant, c.warp_regime, points_per_update=c.points_per_update,
                         batched=c.points_per_update > 1) if spec.warp else None)
        return make_learner(method, model.to(c.device), F.mse_loss, steps=c.steps, warp=warp,
                            inner_lr=c.inner_lr, warp_lr=c.meta_lr, init_lr=c.meta_lr,
                            rate_lr=c.rate_lr, meta_optimizer=c.meta_optimizer, seed=c.seed)

    def sample_meta_batch(self, generator: torch.Generator) -> Sequence[Task]:
        c = self.config
        return sine_tasks(c.meta_batch, generator, shots=c.shots, test_shots=c.test_shots,
                          device=c.device)

    def test_tasks(self) -> Sequence[Task]:
        c = self.config
        generator = torch.Generator().manual_seed(c.seed + 10_000)
        return sine_tasks(c.eval_tasks, generator, shots=c.shots, test_shots=c.test_shots,
                          device=c.device)

    def record(self) -> dict[str, Any]:
        return {"dataset": "sine", "config": asdict(self.config)}
