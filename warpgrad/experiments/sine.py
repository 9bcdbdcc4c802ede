"""Sine regression (Finn et al., 2017, as the WarpGrad paper uses it).

y = A sin(x − b), A ~ U[0.1, 5], b ~ U[0, π], x ~ U[-5, 5], 10-shot; an MLP 40-40 with a
linear warp after each hidden layer for the warped methods. Every method starts from the same
seed; all are scored by the post-adaptation MSE on the same held-out tasks (mean, 95% CI).

``warpgrad train sine`` runs it; see :mod:`warpgrad.experiments.run` for the run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from warpgrad import accel
from warpgrad.algorithms import METHODS, MetaLearner, WarpGrad, check_methods, make_learner
from warpgrad.experiments.validation import check_config
from warpgrad.models import mlp
from warpgrad.tasks import Task, sine_tasks


@dataclass
class SineConfig:
    """Every setting of a sine run (recorded in ``config.json``)."""

    methods: list[str] = field(default_factory=lambda: ["no-meta", "warp-leap", "warp-maml",
                                                        "leap"])
    """methods to meta-train and compare, each from the same seed (warp-leap, warp-maml,
    leap, maml, meta-sgd, no-meta, ...; or --method)"""
    iterations: int = 150
    """meta-iterations (one meta-batch and one meta-update each)"""
    meta_batch: int = 10
    """tasks (sine curves) adapted per meta-iteration"""
    steps: int = 5
    """full-batch SGD steps of each task's adaptation, in meta-training and evaluation"""
    inner_lr: float = 0.01
    """SGD step size of the adaptation (task) parameters θ"""
    meta_lr: float = 3e-3
    """meta learning rate of the warp parameters φ and of the initialisation θ_0"""
    rate_lr: float = 3e-4  # learned per-parameter rates (Meta-SGD) diverge at 1e-3 on some seeds
    """meta learning rate of learned inner step sizes (meta-sgd)"""
    meta_optimizer: str = "adam"
    """optimiser of the meta-updates: adam or sgd"""
    warp_variant: str = "exact"
    """WarpGrad's meta-loss: exact (through the inner gradient), first-order or no-step"""
    warp_regime: str = "offline"
    """online: φ's gradient gathered while tasks adapt; offline: φ updated afterwards over a
    replay buffer of trajectory points"""
    points_per_update: int = 6
    """offline: trajectory points per φ update (batched in one vmap call when above 1)"""
    shots: int = 10
    """points (x, y) per task the adaptation fits"""
    test_shots: int = 100
    """held-out points per task: the meta-objective's and the test MSE's"""
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    """hidden layer widths of the MLP (warped methods: a linear warp after each)"""
    eval_tasks: int = 200
    """held-out tasks of the final evaluation"""
    checkpoint_every: int = 25
    """meta-iterations between checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seeds the initialisation (the same θ_0 for every method) and the tasks"""
    device: str = "cpu"
    """cpu or cuda (cuda:N)"""
    accelerate: bool = True
    """use the accelerator's faster layers (the same numbers)"""

    def __post_init__(self) -> None:
        check_methods(self.methods)
        for name in ("iterations", "meta_batch", "steps", "eval_tasks", "checkpoint_every",
                     "points_per_update", "shots", "test_shots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_config(self)


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
