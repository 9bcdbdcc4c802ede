"""Fine-tuning: pretrain θ_0 on the union of the training tasks, then adapt as usual.

The baseline the paper calls multi-headed fine-tuning. θ_0's gradient for a task is the
ordinary training-batch gradient at θ_0 (no adaptation during meta-training), so the
meta-batch average is a gradient of the loss on the union of the tasks. With ``head`` set,
each recurring task (``Task.key``, e.g. an alphabet) trains its own copy of the classifier
head by SGD and θ_0's head stays at its initialisation: every new task starts from a fresh
head on the pretrained body. Without ``head``, one head is shared (single-headed).

Example:
    >>> import torch.nn.functional as F
    >>> from warpgrad import MetaLearner, conv4
    >>> from warpgrad.algorithms import FineTune
    >>> learner = MetaLearner(conv4(20, warp=None), F.cross_entropy, steps=100,
    ...                       init=FineTune(head="head"))
"""

from __future__ import annotations

import torch
from torch import Tensor

from warpgrad.algorithms.base import InitObjective, TaskRun
from warpgrad.engine.adapt import Observer


class FineTune(InitObjective):
    """Args: ``head`` (name prefix of the head's parameters, for multi-headed pretraining)
    and ``head_lr`` (SGD step of the per-task heads)."""

    adapts = False

    def __init__(self, head: str | None = None, head_lr: float = 0.1) -> None:
        self.head = head
        self.head_lr = head_lr
        self.heads: dict[str, Tensor] = {}

    def _head_mask(self, run: TaskRun) -> Tensor:
        spec = run.model.task_spec
        in_head = [n == self.head or n.startswith(self.head + ".") for n in spec.names]
        if not any(in_head):
            raise ValueError(f"no task parameter is named {self.head!r}.*; parameters: "
                             f"{list(spec.names)}")
        return torch.tensor(in_head, device=run.theta0.device)[spec.segment_ids(run.theta0.device)]

    def task_gradient(self, run: TaskRun, observer: Observer | None) -> Tensor:
        theta = run.theta0.detach().clone()
        mask = None
        if self.head is not None:
            if run.task.key is None:
                raise ValueError("multi-headed fine-tuning needs tasks with a key (one head "
                                 "per key); use FineTune(head=None) for a shared head")
            mask = self._head_mask(run)
            head = self.heads.setdefault(run.task.key, theta[mask].clone())
            theta[mask] = head
        theta.requires_grad_()
        x, y = run.task.train_batch(run.generator)
        (grad,) = torch.autograd.grad(run.loss_fn(run.model(x, theta), y), theta)
        if mask is not None:
            self.heads[run.task.key] = head - self.head_lr * grad[mask]
            grad = grad.masked_fill(mask, 0.0)
        return grad

    def state_dict(self) -> dict:
        return {"heads": dict(self.heads)}

    def load_state_dict(self, state: dict) -> None:
        self.heads = dict(state["heads"])
