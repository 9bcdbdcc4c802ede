"""The one inner loop: adapt θ by SGD through the warped model for K steps on one task.

Every algorithm runs adaptation through :func:`adapt`. What differs between algorithms is
what *watches* the loop: observers receive each trajectory point θ_k with its loss, gradient
and optimiser state (Leap's path length, the replay buffer, WarpGrad's online meta-loss), and
MAML asks for the loop to keep its autograd graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from warpgrad.engine.backend import LossFn, detached
from warpgrad.engine.inner_sgd import InnerSGD

if TYPE_CHECKING:
    from warpgrad.models.warped import WarpedModel
    from warpgrad.tasks.base import Task

__all__ = ["Adaptation", "LossFn", "Observer", "StepRecord", "adapt"]


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
    """Something that watches adaptation through :meth:`observe`.

    ``needs_final_loss``: the engine evaluates the training loss at θ_K (one extra forward
    pass). Two optional attributes (``False`` when absent): ``needs_step_graph``, each
    step's gradient keeps its graph to φ and is shown as ``record.grad_graph`` (one step's
    graph alive at a time); ``reuses_steps``, the observer's meta-objective takes each
    adaptation step as its own one step at θ_k (WarpGrad's online Algorithm 1).
    """

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
    observers: Sequence[Observer] = (),
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> Adaptation:
    """Run ``steps`` SGD steps on ``task``'s training batches from ``theta`` (``[P]``).

    φ, the model's warp parameters, is held constant, unless the adaptation itself is
    differentiated (``create_graph``) or an observer needs each step's graph to φ.

    Args:
        model: the warped learner; its ``backend`` runs every step.
        theta: the starting point θ_0, ``[P]``.
        task: supplies one training batch per step (``task.train_batch``).
        loss_fn: ``(prediction, target) -> scalar``.
        optimizer: the inner optimiser (its state is initialised here).
        steps: K, the number of SGD steps.
        observers: each is shown every point θ_0..θ_K (see :class:`StepRecord`).
        create_graph: keep the graph through all K steps so θ_K is differentiable with
            respect to θ_0, φ and the optimiser's meta-parameters (MAML, second order).
            Otherwise every step is detached and memory does not grow with K.
        generator: seeds the batch draws.
    """
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    backend = model.backend
    keep_grad_graph = any(getattr(o, "needs_step_graph", False) for o in observers)
    warp_step = any(getattr(o, "reuses_steps", False) for o in observers)
    phi = None if create_graph or keep_grad_graph else {
        n: p.detach() for n, p in model.warp_parameters().items()}
    theta = theta if create_graph else theta.detach()
    state = optimizer.init_state(theta)
    buffers = model.task_buffers()
    losses = []
    batches = backend.train_batches(task, steps, generator)
    for k, batch in zip(range(steps), batches):
        step = backend.adaptation_step(
            model, loss_fn, optimizer, theta, state, batch, phi=phi, buffers=buffers,
            create_graph=create_graph, keep_grad_graph=keep_grad_graph, warp_step=warp_step)
        losses.append(step.loss)
        if observers:  # no record to build for an unwatched adaptation (evaluation)
            _show(observers, StepRecord(k, detached(theta), detached(state), step.loss,
                                        detached(step.grad),
                                        step.grad if keep_grad_graph else None))
        theta, state = step.theta, step.state
        del step  # a gradient's kept graph goes before the next step's is built
    if observers:
        final_loss = None
        if any(o.needs_final_loss for o in observers):
            with torch.no_grad():
                x, y = task.train_batch(generator)
                final_loss = loss_fn(model(x, theta, phi, buffers=buffers), y)
        _show(observers, StepRecord(steps, detached(theta), detached(state), final_loss, None))
    stacked = torch.stack(losses) if losses else theta.new_zeros(0)
    return Adaptation(theta, state, stacked, buffers)


def _show(observers: Sequence[Observer], record: StepRecord) -> None:
    for observer in observers:
        observer.observe(record)
