"""The one inner loop: adapt θ by SGD through the warped model for K steps on one task.

Every algorithm runs adaptation through :func:`adapt`. What differs between algorithms is
what *watches* the loop: observers receive each trajectory point θ_k with its loss, gradient
and optimiser state (Leap's path length, the replay buffer, WarpGrad's online meta-loss), and
MAML asks for the loop to keep its autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from torch import Tensor

from warpgrad._autograd import detached
from warpgrad.engine.graphs import graphs_of, reads_of, switches_of
from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.models._second_order import second_order
from warpgrad.models.warped import WarpedModel
from warpgrad.tasks.base import Batch, Task, draw_batches

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
    and shown as ``record.grad_graph`` (one step's graph alive at a time), and
    ``needs_full_precision = True`` runs every step's pass in float32 under a bf16 model
    (the step is then WarpGrad's step at θ_k, see ``WarpedModel.full_precision``). An
    observer that draws from the adaptation's generator must set ``draws_batches = True``:
    the engine otherwise draws several steps' batches ahead (``Task.prefetch_mb``), which
    keeps the batches only while nothing else draws in between."""

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
    # a gradient that is differentiated again cannot come from a compiled graph, and its
    # layers compute for a second derivative
    mode = partial(_second_order_eager, model) if create_graph or step_graph else nullcontext
    precise = _precision(model, observers)
    # a graph replays fixed kernels: not for steps whose graph is kept, nor for batch-norm
    # statistics updated in place
    graphs = None if create_graph or step_graph or buffers else graphs_of(model)
    if graphs is not None:
        graph_name = ("adapt", loss_fn, precise is nullcontext, switches_of(model))
        graph_reads = reads_of(model, optimizer) + list((phi or {}).values())

    def loss_and_grad(theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        leaf = theta.detach().requires_grad_()
        with precise():
            loss = loss_fn(model(x, leaf, phi), y)
        return loss.detach(), torch.autograd.grad(loss, leaf)[0]

    def graphed_step(theta: Tensor, x: Tensor, y: Tensor, *state: Tensor) -> list[Tensor]:
        # the SGD update too: a replay is one launch, the update outside it three
        loss, grad = loss_and_grad(theta, x, y)
        with torch.no_grad():
            theta, new_state = optimizer.step(theta, grad, state[0] if state else None)
        return [loss, grad, theta, *(() if new_state is None else (new_state,))]

    losses = []
    batches = _step_batches([task], steps, generator, observers)
    for k in range(steps):
        ((x, y),) = next(batches)
        if graphs is not None:  # every output comes back detached
            args = (theta, x, y) if state is None else (theta, x, y, state)
            loss, grad, *stepped = graphs(graph_name, graphed_step, args, graph_reads)
        else:
            if not create_graph:
                theta = theta.detach().requires_grad_()
            with mode(), precise():
                loss = loss_fn(model(x, theta, phi, buffers=buffers), y)
            (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph or step_graph)
        losses.append(detached(loss))
        if observers:
            record = StepRecord(k, detached(theta), detached(state), detached(loss), detached(grad),
                                grad if step_graph else None)
            for observer in observers:
                observer.observe(record)
            del record
        if graphs is not None:
            theta, state = stepped[0], (stepped[1] if len(stepped) > 1 else None)
        elif create_graph:
            theta, state = optimizer.step(theta, grad, state)
        else:
            grad = detached(grad)  # drops the step's graph, if an observer kept one
            with torch.no_grad():
                theta, state = optimizer.step(theta, grad, state)
    if observers:
        final_loss = None
        if any(o.needs_final_loss for o in observers):
            with torch.no_grad():
                x, y = task.train_batch(generator)
                final_loss = loss_fn(model(x, theta, phi, buffers=buffers), y)
        record = StepRecord(steps, detached(theta), detached(state), final_loss, None)
        for observer in observers:
            observer.observe(record)
    stacked = torch.stack(losses) if losses else theta.new_zeros(0)
    return Adaptation(theta, state, stacked, buffers)


def adapt_tasks(
    model: WarpedModel,
    theta: Tensor,
    tasks: Sequence[Task],
    loss_fn: LossFn,
    optimizer: InnerSGD,
    steps: int,
    *,
    phi: Mapping[str, Tensor] | None = None,
    observers: Sequence[Sequence[Observer]] | None = None,
    generator: torch.Generator | None = None,
) -> list[Adaptation]:
    """:func:`adapt` for several tasks at once, from the same ``theta`` ``[P]``: each step
    runs every task's forward and backward as one ``torch.func.vmap`` over the tasks, on the
    batches each task draws, then one SGD step of the stacked ``[T, P]`` parameters.

    The same computation as adapting the tasks one by one on the same batches (the batches
    are drawn step by step across tasks, so a random draw order differs from sequential
    adaptation). Faster where one task's batch leaves the device idle; on a few CPU cores the
    convolutions are already saturated. Needs one batch shape per step across the tasks and a
    model without buffers (in-place batch-norm statistics cannot be vmapped); observers that
    need a step's graph (``needs_step_graph``) are refused. ``observers``: one sequence per
    task. Returns one :class:`Adaptation` per task.
    """
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if model.has_buffers:
        raise ValueError("adapt_tasks cannot vmap a model with buffers (running batch-norm "
                         "statistics); adapt the tasks one by one")
    per_task = [list(o) for o in observers] if observers is not None else [[] for _ in tasks]
    if len(per_task) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks but {len(per_task)} observer lists")
    watching = [o for obs in per_task for o in obs]
    if any(getattr(o, "needs_step_graph", False) for o in watching):
        raise ValueError("adapt_tasks keeps no step graphs; adapt the tasks one by one")
    thetas = theta.detach().expand(len(tasks), -1).clone()
    states = optimizer.init_state(thetas)

    def loss_and_grad(th: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.grad_and_value(lambda t: loss_fn(model(x, t, phi), y))(th)

    def stacked(batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        shapes = {(b[0].shape, b[1].shape) for b in batches}
        if len(shapes) > 1:
            raise ValueError(f"adapt_tasks needs one batch shape per step; got {sorted(shapes)}")
        return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])

    step_all = torch.func.vmap(loss_and_grad)
    precise = _precision(model, watching)
    graphs = graphs_of(model)
    reads = reads_of(model, optimizer) + list((phi or {}).values())
    with model.plain_layout(), precise():
        graph_name = ("adapt_tasks", loss_fn, switches_of(model))
        losses = []
        batches = _step_batches(tasks, steps, generator, watching)
        for k in range(steps):
            x, y = stacked(next(batches))
            if graphs is not None:
                grads, loss = graphs(graph_name, step_all, (thetas, x, y), reads)
            else:
                grads, loss = step_all(thetas, x, y)
            grads, loss = detached(grads), detached(loss)
            losses.append(loss)
            for i, obs in enumerate(per_task):
                if obs:
                    record = StepRecord(k, thetas[i], None if states is None else states[i],
                                        loss[i], grads[i])
                    for observer in obs:
                        observer.observe(record)
            with torch.no_grad():
                thetas, states = optimizer.step(thetas, grads, states)
        final_losses: Tensor | None = None
        if any(o.needs_final_loss for o in watching):
            with torch.no_grad():
                x, y = stacked([task.train_batch(generator) for task in tasks])
                final_losses = torch.func.vmap(lambda t, xb, yb: loss_fn(model(xb, t, phi), yb))(
                    thetas, x, y)
    for i, obs in enumerate(per_task):
        if obs:
            record = StepRecord(steps, thetas[i], None if states is None else states[i],
                                None if final_losses is None else final_losses[i], None)
            for observer in obs:
                observer.observe(record)
    trajectory = torch.stack(losses, 1) if losses else thetas.new_zeros(len(tasks), 0)
    return [Adaptation(thetas[i], None if states is None else states[i], trajectory[i], {})
            for i in range(len(tasks))]


def _step_batches(tasks: Sequence[Task], steps: int, generator: torch.Generator | None,
                  observers: Sequence[Observer]) -> Iterator[list[Batch]]:
    """Each step's training batch of every task (drawn step by step, task after task), drawn
    a window of steps at a time unless an observer draws from the generator too."""
    window = 1
    if not any(getattr(o, "draws_batches", False) for o in observers):
        window = max(1, min(t.prefetch_window() for t in tasks) // len(tasks))
    for start in range(0, steps, window):
        count = min(window, steps - start)
        drawn = draw_batches([(t, "train") for _ in range(count) for t in tasks], generator)
        for k in range(count):
            yield drawn[k * len(tasks):(k + 1) * len(tasks)]


def _precision(model: WarpedModel, observers: Sequence[Observer]) -> Callable:
    """The context every step's pass runs in: float32 when an observer asks for it."""
    if any(getattr(o, "needs_full_precision", False) for o in observers):
        return model.full_precision
    return nullcontext


@contextmanager
def _second_order_eager(model: WarpedModel) -> Iterator[None]:
    """Passes whose gradient is differentiated again: eager, with the layers' second-order
    paths."""
    with model.eager(), second_order():
        yield
