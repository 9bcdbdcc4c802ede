"""The one inner loop: adapt θ by SGD through the warped model for K steps on one task.

Every algorithm runs adaptation through :func:`adapt`. What differs between algorithms is
what *watches* the loop: observers receive each trajectory point θ_k with its loss, gradient
and optimiser state (Leap's path length, the replay buffer, WarpGrad's online meta-loss), and
MAML asks for the loop to keep its autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.models.warped import WarpedModel
from warpgrad.tasks.base import Task

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(prediction, target) -> scalar``, e.g. ``F.cross_entropy`` or ``F.mse_loss``."""


@dataclass
class StepRecord:
    """One trajectory point, detached from any graph.

    ``theta`` ``[P]`` is θ_k, ``state`` the optimiser state (velocity) at θ_k or ``None``,
    ``loss`` the training-batch loss at θ_k (a 0-d tensor), ``grad`` ``[P]`` its gradient.
    For the final point θ_K, ``grad`` is ``None`` and ``loss`` is ``None`` unless an
    observer asked for it (``needs_final_loss``). ``grad_graph`` is the same gradient still
    attached to its graph (differentiable in φ) when an observer asked for it
    (``needs_step_graph``), else ``None``.
    """

    step: int
    theta: Tensor
    state: Tensor | None
    loss: Tensor | None
    grad: Tensor | None
    grad_graph: Tensor | None = None


class Observer(Protocol):
    """Something that watches adaptation. ``needs_final_loss`` asks the engine to evaluate the
    training loss at θ_K (one extra forward pass). An observer may also set
    ``needs_step_graph = True``: each step's gradient is then taken with ``create_graph``
    and shown as ``record.grad_graph`` (one step's graph alive at a time)."""

    needs_final_loss: bool

    def observe(self, record: StepRecord) -> None: ...


@dataclass
class Adaptation:
    """The outcome of :func:`adapt`.

    ``theta`` ``[P]``: θ_K (carrying the graph back to θ_0 when ``create_graph=True``);
    ``state``: the final optimiser state; ``losses`` ``[K]``: training loss at θ_0..θ_{K-1};
    ``buffers``: the task's own buffers after adaptation (batch-norm running statistics
    gathered on this task only; empty for learners without buffers).
    """

    theta: Tensor
    state: Tensor | None
    losses: Tensor
    buffers: dict[str, Tensor]


def adapt(
    model: WarpedModel,
    theta: Tensor,
    task: Task,
    loss_fn: LossFn,
    optimizer: InnerSGD,
    steps: int,
    *,
    phi: Mapping[str, Tensor] | None = None,
    observers: Sequence[Observer] = (),
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> Adaptation:
    """Run ``steps`` SGD steps on ``task``'s training batches from ``theta`` (``[P]``).

    Args:
        model: the warped learner; φ is the model's own warp parameters unless ``phi`` is
            given. φ is never modified here.
        theta: the starting point θ_0, ``[P]``.
        task: supplies one training batch per step (``task.train_batch``).
        loss_fn: ``(prediction, target) -> scalar``.
        optimizer: the inner optimiser (its state is initialised here).
        steps: K, the number of SGD steps.
        observers: each is shown every point θ_0..θ_K (see :class:`StepRecord`).
        create_graph: keep the graph through all K steps so θ_K is differentiable with
            respect to θ_0 and the optimiser's meta-parameters (MAML, second order).
            Otherwise every step is detached and memory does not grow with K.
        generator: seeds the batch draws.
    """
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if not create_graph:
        theta = theta.detach()
    state = optimizer.init_state(theta)
    buffers = model.task_buffers()
    step_graph = any(getattr(o, "needs_step_graph", False) for o in observers)
    losses = []
    for k in range(steps):
        x, y = task.train_batch(generator)
        if not create_graph:
            theta = theta.detach().requires_grad_()
        loss = loss_fn(model(x, theta, phi, buffers=buffers), y)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph or step_graph)
        losses.append(loss.detach())
        if observers:
            record = StepRecord(k, theta.detach(), _detach(state), loss.detach(), grad.detach(),
                                grad if step_graph else None)
            for observer in observers:
                observer.observe(record)
            del record
        if create_graph:
            theta, state = optimizer.step(theta, grad, state)
        else:
            grad = grad.detach()  # drops the step's graph, if an observer kept one
            with torch.no_grad():
                theta, state = optimizer.step(theta, grad, state)
    if observers:
        final_loss = None
        if any(o.needs_final_loss for o in observers):
            with torch.no_grad():
                x, y = task.train_batch(generator)
                final_loss = loss_fn(model(x, theta, phi, buffers=buffers), y)
        record = StepRecord(steps, theta.detach(), _detach(state), final_loss, None)
        for observer in observers:
            observer.observe(record)
    stacked = torch.stack(losses) if losses else theta.new_zeros(0)
    return Adaptation(theta, state, stacked, buffers)


def _detach(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()
