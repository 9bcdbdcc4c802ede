"""MAML (Finn et al., 2017): meta-learn θ_0 through the adaptation itself.

The meta-loss is the task's query loss after K steps, L(θ_K(θ_0)). Second-order MAML
backpropagates through all K steps (the engine keeps their graph, so memory grows with K);
first-order MAML uses ∇L(θ_K) as θ_0's gradient. With a meta-learned inner learning rate and
no warp objective this is Meta-SGD: the rate gets MAML's gradient too.

Example:
    >>> import torch, torch.nn.functional as F
    >>> from warpgrad import MAML, MetaLearner, mlp, sine_tasks
    >>> learner = MetaLearner(mlp(warp=None), F.mse_loss, init=MAML(), steps=5, inner_lr=0.01)
    >>> stats = learner.meta_step(sine_tasks(4, torch.Generator().manual_seed(0)))
    >>> sorted(stats)
    ['adapt_loss_first', 'adapt_loss_last']
"""

from __future__ import annotations

import torch
from torch import Tensor

from warpgrad.algorithms.base import InitObjective, TaskRun
from warpgrad.engine.adapt import Observer


class MAML(InitObjective):
    """Args: ``first_order`` drops the second-order terms (FOMAML)."""

    def __init__(self, first_order: bool = False) -> None:
        self.first_order = first_order
        self.differentiable = not first_order

    def task_gradient(self, run: TaskRun, observer: Observer | None) -> Tensor:
        x, y = run.task.meta_batch(run.generator)
        if self.first_order:
            theta = run.adaptation.theta.detach().requires_grad_()
            (grad,) = torch.autograd.grad(run.loss_fn(run.model(x, theta), y), theta)
            return grad
        loss = run.loss_fn(run.model(x, run.adaptation.theta), y)
        extra = [p for p in run.meta_parameters if p.requires_grad]
        grads = torch.autograd.grad(loss, [run.theta0, *extra])
        for p, g in zip(extra, grads[1:]):
            p.grad = g * run.scale if p.grad is None else p.grad + g * run.scale
        return grads[0]
