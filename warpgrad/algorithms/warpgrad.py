"""The WarpGrad meta-objective for the warp parameters φ (Flennerhag et al., ICLR 2020).

For a trajectory point θ_k of task τ, held constant (a Monte-Carlo sample of where adaptation
goes, never differentiated back through the adaptation that produced it):

    L(θ_k; φ) = L_meta^τ( θ_k − α ∇L_task^τ(θ_k; φ) ; φ )          (Eq. 11, "exact")

with L_task and L_meta on different batches of τ. Variants, by name:

- ``"exact"``: φ's gradient flows through the forward pass at the stepped point *and*
  through the inner gradient ∇L_task(θ_k; φ) (a Hessian-vector product). The original code
  meant this but detached the inner gradient; here it is exact, checked against finite
  differences in the tests.
- ``"first-order"`` (Eq. 12): the step θ' = θ_k − α∇L_task is taken with φ held constant;
  φ's gradient flows only through L_meta at θ'.
- ``"no-step"``: L_meta at θ_k itself.

Meta-learned inner-optimiser parameters (learning rates, momentum) get the same objective's
gradient through the step.

Regimes: ``"online"`` (Algorithm 1) accumulates φ's gradient at each point while a task
adapts and updates φ once per meta-batch; ``"offline"`` (Algorithm 2) fills a replay buffer
over the meta-batch, then updates φ over the buffer in shuffled mini-batches of points for a
number of epochs (the original code: mini-batches of 1 point, 1 epoch).

Example:
    >>> from warpgrad import MetaLearner, mlp
    >>> from warpgrad.algorithms import Leap, WarpGrad
    >>> learner = MetaLearner(mlp(), F.mse_loss, warp=WarpGrad("exact"), init=Leap(), steps=10)
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import nullcontext
from typing import Literal

import torch
from torch import Tensor, nn

from warpgrad._autograd import detached, func_grad
from warpgrad._transfer import to_device
from warpgrad.engine.adapt import LossFn, StepRecord
from warpgrad.engine.buffer import Points, ReplayBuffer
from warpgrad.engine.graphs import GraphCache, graphs_of, reads_of, switches_of
from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.models._norm import EXACT_UNDER_VMAP
from warpgrad.models._pool import argmax_only
from warpgrad.models._second_order import second_order
from warpgrad.models.warped import WarpedModel
from warpgrad.tasks.base import Batch, Task, draw_batches

Variant = Literal["exact", "first-order", "no-step"]
Regime = Literal["online", "offline"]


class WarpGrad:
    """WarpGrad's objective for φ and how it is scheduled.

    Args:
        variant: ``"exact"``, ``"first-order"`` or ``"no-step"`` (see the module docstring).
        regime: ``"online"`` or ``"offline"``.
        epochs: offline passes over the buffer per meta-batch.
        points_per_update: offline mini-batch size in buffer points (one φ update each).
        stride: use every ``stride``-th trajectory point (θ_0, θ_stride, ..., plus θ_K):
            Monte-Carlo subsampling of the trajectory.
        point_fraction: use a random fraction of those points: per task,
            ``max(1, round(point_fraction * n))`` of its ``n`` points, drawn without
            replacement from the learner's generator before the task adapts; only they are
            stored (offline) or evaluated (online). The meta-loss is their mean, an unbiased
            estimate of the mean over all ``n``.
        batched: evaluate a mini-batch of points in one ``torch.func.vmap`` call instead of
            one at a time (same result; falls back to one at a time when batch shapes differ
            across the points, when the model keeps running batch-norm statistics, and for
            the exact variant of a model with batch norm, whose second-order gradient
            PyTorch's vmap gets wrong).
        chunk_size: bound the vmap's memory by evaluating at most this many points at once.
        buffer_dtype: how the offline replay buffer stores points (default: the model's
            dtype; ``torch.float16`` or ``torch.bfloat16`` halve its memory, rounding θ_k).
        buffer_on_disk: keep the offline replay buffer in a temporary file (lossless; memory
            then does not grow with the meta-batch and K).
        share_step: online only. The one step at θ_k is the adaptation's own step (its
            batch and gradient, θ_k → θ_{k+1}), as in the paper's Algorithm 1, instead of a
            fresh one on a new batch: the meta-loss then costs one forward+backward at θ_{k+1}
            per point instead of two passes. For ``"exact"`` the adaptation keeps each step's
            graph to φ (one step at a time). With full-batch tasks both give the same gradient.
    """

    def __init__(
        self,
        variant: Variant = "exact",
        regime: Regime = "offline",
        *,
        epochs: int = 1,
        points_per_update: int = 1,
        stride: int = 1,
        point_fraction: float = 1.0,
        batched: bool = False,
        chunk_size: int | None = None,
        buffer_dtype: torch.dtype | None = None,
        buffer_on_disk: bool = False,
        share_step: bool = False,
    ) -> None:
        if variant not in ("exact", "first-order", "no-step"):
            raise ValueError(
                f"unknown WarpGrad variant {variant!r}; expected 'exact', 'first-order' or "
                "'no-step'")
        if regime not in ("online", "offline"):
            raise ValueError(f"unknown regime {regime!r}; expected 'online' or 'offline'")
        for name, value in (("epochs", epochs), ("points_per_update", points_per_update),
                            ("stride", stride)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.variant = variant
        self.regime = regime
        self.epochs = epochs
        self.points_per_update = points_per_update
        if not 0.0 < point_fraction <= 1.0:
            raise ValueError(f"point_fraction must be in (0, 1], got {point_fraction}")
        self.stride = stride
        self.point_fraction = point_fraction
        self.batched = batched
        self.chunk_size = chunk_size
        self.buffer_dtype = buffer_dtype
        self.buffer_on_disk = buffer_on_disk
        if share_step and regime != "online":
            raise ValueError("share_step needs the online regime: offline points are revisited "
                             "after φ has moved, so the adaptation's step is not theirs")
        self.share_step = share_step

    def strided_steps(self, steps: int) -> list[int]:
        """The steps of a K-step trajectory that ``stride`` keeps: 0, stride, ..., and K."""
        kept = list(range(0, steps + 1, self.stride))
        return kept if kept[-1] == steps else [*kept, steps]

    def points_per_task(self, steps: int) -> int:
        """How many points of a K-step trajectory the objective uses."""
        n = len(self.strided_steps(steps))
        return n if self.point_fraction == 1.0 else max(1, round(self.point_fraction * n))

    def sample_steps(self, steps: int, generator: torch.Generator | None = None
                     ) -> frozenset[int]:
        """The steps whose points one task's trajectory contributes: the strided ones, then
        a random ``point_fraction`` of them (no draw from ``generator`` when it is 1)."""
        kept = self.strided_steps(steps)
        if self.point_fraction < 1.0:
            pick = torch.randperm(len(kept), generator=generator)[: self.points_per_task(steps)]
            kept = [kept[i] for i in pick.tolist()]
        return frozenset(kept)

    # -- the meta-loss at one point -------------------------------------------------------

    def point_loss(
        self,
        model: WarpedModel,
        loss_fn: LossFn,
        optimizer: InnerSGD,
        theta: Tensor,
        state: Tensor | None,
        inner_batch: Batch,
        meta_batches: Sequence[Batch],
        *,
        vmapped: bool = False,
    ) -> Tensor:
        """The meta-loss at one point θ_k ``[P]`` (a constant); differentiable in φ and the
        optimiser's meta-parameters. ``meta_batches``: the loss after the step is averaged
        over them (several for continual learning). Works under ``torch.func.vmap`` (say so
        with ``vmapped=True``)."""
        theta = theta.detach()
        if self.variant == "no-step":
            stepped = theta
        else:
            phi = None
            if self.variant == "first-order":
                phi = {n: p.detach() for n, p in model.warp_parameters().items()}
            x, y = inner_batch

            def task_loss(th: Tensor) -> Tensor:
                return loss_fn(model(x, th, phi), y)

            # the step in float32 even under bf16: bf16 rounding in the inner gradient put a
            # 79% error into the meta-gradient at the multi-shot protocol (BENCHMARKS.md)
            with model.full_precision():
                if self.variant == "first-order" and not vmapped:
                    # plain autograd: cheaper than torch.func.grad outside vmap. Not for
                    # "exact": there θ would be a leaf of the step's graph, and a backward
                    # restricted to the meta-parameters leaves that graph's θ side alive (a
                    # leak), while an unrestricted one computes θ's unneeded Hessian terms.
                    with torch.enable_grad():  # the inner gradient exists even under no_grad
                        leaf = theta.requires_grad_()
                        (grad,) = torch.autograd.grad(task_loss(leaf), leaf)
                    theta = theta.detach()
                else:
                    with second_order() if self.variant == "exact" else nullcontext():
                        grad = func_grad(task_loss, theta)
            stepped, _ = optimizer.step(theta, grad, None if state is None else state.detach())
        # the step's graph is held until this loss's backward reaches it
        with argmax_only() if self.variant == "exact" else nullcontext():
            losses = [loss_fn(model(xm, stepped), ym) for xm, ym in meta_batches]
        return torch.stack(losses).mean()

    def points_loss(
        self,
        model: WarpedModel,
        loss_fn: LossFn,
        optimizer: InnerSGD,
        points: Points,
        tasks: Sequence[Task],
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean meta-loss over buffer points; each point draws its batches from its task."""
        drawn = _point_batches(tasks, _pairs(points.task_index, points.step), generator)
        return self._batches_loss(model, loss_fn, optimizer, points.thetas, points.states,
                                  list(drawn))

    def _batches_loss(self, model: WarpedModel, loss_fn: LossFn, optimizer: InnerSGD,
                      thetas: Tensor, states: Tensor | None,
                      batches: list[tuple[Batch, list[Batch]]]) -> Tensor:
        """:meth:`points_loss` on batches already drawn: points ``thetas`` ``[n, P]``."""
        if self.batched and len(thetas) > 1 and self._vmap_safe(model) and _stackable(batches):
            inner_x = torch.stack([b[0][0] for b in batches])
            inner_y = torch.stack([b[0][1] for b in batches])
            meta_x = [torch.stack([b[1][j][0] for b in batches]) for j in range(len(batches[0][1]))]
            meta_y = [torch.stack([b[1][j][1] for b in batches]) for j in range(len(batches[0][1]))]

            def one(theta, state, ix, iy, mx, my):
                return self.point_loss(model, loss_fn, optimizer, theta, state, (ix, iy),
                                       list(zip(mx, my)), vmapped=True)

            state_dim = None if states is None else 0
            exact = second_order if self.variant == "exact" else nullcontext
            with model.plain_layout(), exact():
                losses = torch.func.vmap(one, in_dims=(0, state_dim, 0, 0, 0, 0),
                                         chunk_size=self.chunk_size, randomness="different")(
                    thetas, states, inner_x, inner_y, meta_x, meta_y)
            return losses.mean()
        total = 0.0
        for i, (inner, metas) in enumerate(batches):
            state = None if states is None else states[i]
            total = total + self.point_loss(model, loss_fn, optimizer, thetas[i], state,
                                            inner, metas)
        return total / len(thetas)

    def _vmap_safe(self, model: WarpedModel) -> bool:
        if model.has_buffers:
            return False
        # vmap gets the fused batch norm's second-order gradient wrong (pytorch/functorch#534:
        # 2.3e-3 off on Conv4 in float64); the library's own layers avoid it (models._norm)
        norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        fused = any(isinstance(m, norms) and not isinstance(m, EXACT_UNDER_VMAP)
                    for m in model.module.modules())
        return not (self.variant == "exact" and fused)

    # -- the two regimes ------------------------------------------------------------------

    def online_observer(self, model: WarpedModel, loss_fn: LossFn, optimizer: InnerSGD,
                        task: Task, generator: torch.Generator | None, scale: float,
                        steps: Collection[int] | None = None) -> _OnlineAccumulator:
        """Algorithm 1: an adaptation observer that backpropagates ``scale`` x the meta-loss
        at each used point into φ's ``.grad`` as the task adapts (one graph alive at a time,
        so memory does not grow with K). ``steps``: the points to use (from
        :meth:`sample_steps`); by default every ``stride``-th and the last."""
        return _OnlineAccumulator(self, model, loss_fn, optimizer, task, generator, scale,
                                  steps)

    def offline_update(
        self,
        model: WarpedModel,
        loss_fn: LossFn,
        optimizer: InnerSGD,
        buffer: ReplayBuffer,
        tasks: Sequence[Task],
        meta_optimizer: torch.optim.Optimizer,
        generator: torch.Generator | None = None,
    ) -> list[float]:
        """Algorithm 2: φ updates over the buffer in shuffled mini-batches of points, for
        ``epochs`` passes. Returns each update's meta-loss."""
        history = []
        n = len(buffer)
        # shuffle from a canonical (task, step) order, so that the order points were stored in
        # (task after task, or step by step when tasks adapt together) does not matter
        keys = buffer.task_index[:n] * (int(buffer.step[:n].max()) + 1) + buffer.step[:n]
        canonical = torch.argsort(keys, stable=True)
        inputs = [p for group in meta_optimizer.param_groups for p in group["params"]]
        graphs = graphs_of(model)
        # what a graphed update reads besides its arguments: listed once (a walk over the
        # modules costs ~0.1 ms of host time, as much as a replay on a GPU)
        reads = [*reads_of(model, optimizer), *inputs] if graphs is not None else []
        for _ in range(self.epochs):
            order = canonical[torch.randperm(n, generator=generator)]
            # the epoch's batches in its order, drawn a window of points ahead: nothing else
            # draws from the generator until the epoch ends
            drawn = _point_batches(tasks, _pairs(buffer.task_index[order], buffer.step[order]),
                                   generator)
            # one copy of the order to where the rows are read, not one per update
            chunks = to_device(order, buffer.index_device).split(self.points_per_update)
            for chunk in chunks:
                meta_optimizer.zero_grad(set_to_none=True)
                thetas, states = buffer.read(chunk)
                batches = [next(drawn) for _ in range(len(chunk))]
                if graphs is None:
                    loss = self._batches_loss(model, loss_fn, optimizer, thetas, states, batches)
                    torch.autograd.backward(loss, inputs=inputs)
                else:
                    loss = self._graphed_update(graphs, model, loss_fn, optimizer, thetas, states,
                                                batches, inputs, reads)
                meta_optimizer.step()
                history.append(detached(loss))
        if graphs is not None:  # the last update's gradients outlive the graph's next replay
            for p in inputs:
                p.grad = None if p.grad is None else p.grad.clone()
        # read once at the end: a read per update would make the host wait for the device
        return torch.stack(history).tolist() if history else []

    def _graphed_update(self, graphs: GraphCache, model: WarpedModel, loss_fn: LossFn,
                        optimizer: InnerSGD, thetas: Tensor, states: Tensor | None,
                        batches: list[tuple[Batch, list[Batch]]], inputs: list[Tensor],
                        reads: list[Tensor]) -> Tensor:
        """One update's meta-loss and meta-gradient (into ``inputs``' ``.grad``) replayed
        from a CUDA graph, on the points' batches (drawn outside it); ``reads``: what it
        reads besides its arguments. The gradients are the graph's own outputs, valid until
        its next replay: the φ step reads them first."""
        metas_per_point = [len(metas) for _, metas in batches]
        tensors = [t for inner, metas in batches for batch in (inner, *metas) for t in batch]
        has_states = states is not None

        def update(thetas: Tensor, *rest: Tensor) -> list[Tensor | None]:
            states, flat = (rest[0], rest[1:]) if has_states else (None, rest)
            pairs = iter(zip(flat[::2], flat[1::2]))
            drawn = [(next(pairs), [next(pairs) for _ in range(m)]) for m in metas_per_point]
            loss = self._batches_loss(model, loss_fn, optimizer, thetas, states, drawn)
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            return [loss.detach(), *grads]

        name = ("warpgrad", self.variant, self.batched, self.chunk_size, loss_fn,
                tuple(metas_per_point), switches_of(model))
        args = [thetas, *([states] if has_states else []), *tensors]
        loss, *grads = graphs(name, update, args, reads, fresh=False)
        for p, g in zip(inputs, grads):
            p.grad = g
        return loss.clone()


class _OnlineAccumulator:
    needs_final_loss = False
    draws_batches = True  # each point's batches, from the adaptation's generator

    def __init__(self, objective: WarpGrad, model: WarpedModel, loss_fn: LossFn,
                 optimizer: InnerSGD, task: Task, generator: torch.Generator | None,
                 scale: float, steps: Collection[int] | None) -> None:
        self.objective, self.model, self.loss_fn = objective, model, loss_fn
        self.steps = steps
        self.optimizer, self.task, self.generator, self.scale = optimizer, task, generator, scale
        self.losses: list[Tensor] = []  # read by the learner once per meta-step, not here
        self.share = objective.share_step and objective.variant != "no-step"
        self.needs_step_graph = self.share and objective.variant == "exact"
        # the shared step is WarpGrad's step at θ_k: float32 under bf16, as a fresh one is
        self.needs_full_precision = self.share
        # the meta-parameters; backpropagating into nothing else skips θ_k's own gradient
        self.inputs = [p for p in (*model.warp_parameters().values(), *optimizer.parameters())
                       if p.requires_grad]

    def observe(self, record: StepRecord) -> None:
        final = record.grad is None
        if self.steps is not None:
            if record.step not in self.steps:
                return
        elif record.step % self.objective.stride and not final:
            return
        inner, metas = self.task.warp_batches(record.step, self.generator)
        if self.share and not final:
            grad = record.grad_graph if self.needs_step_graph else record.grad
            stepped, _ = self.optimizer.step(record.theta, grad, record.state)
            loss = torch.stack([self.loss_fn(self.model(x, stepped), y)
                                for x, y in metas]).mean()
        else:  # θ_K has no adaptation step after it: take a fresh one
            loss = self.objective.point_loss(self.model, self.loss_fn, self.optimizer,
                                             record.theta, record.state, inner, metas)
        if self.inputs:
            torch.autograd.backward(loss * self.scale, inputs=self.inputs)
        self.losses.append(loss.detach())  # .item() would make the host wait per point


def _pairs(task_index: Tensor, step: Tensor) -> list[tuple[int, int]]:
    """``(task index, step)`` of each point, as Python ints."""
    return list(zip(task_index.tolist(), step.tolist()))


def _point_batches(tasks: Sequence[Task], pairs: Sequence[tuple[int, int]],
                   generator: torch.Generator | None) -> Iterator[tuple[Batch, list[Batch]]]:
    """Each point's batches (:meth:`Task.warp_batches` of its task and step), in the order
    of ``pairs`` ``(task index, step)``: the same draws in the same order, a window of
    points at a time (one gather and augmentation per task and window, see
    :func:`~warpgrad.tasks.base.draw_batches`). Tasks that make their own warp batches
    (continual learning) are asked point by point."""
    if any(type(t).warp_batches is not Task.warp_batches for t in tasks):
        for t, s in pairs:
            yield tasks[t].warp_batches(s, generator)
        return
    window = max(1, min(t.prefetch_window() for t in tasks) // 2)
    for start in range(0, len(pairs), window):
        group = pairs[start:start + window]
        drawn = draw_batches([(tasks[t], split) for t, _ in group for split in ("train", "meta")],
                             generator)
        for i in range(len(group)):
            yield drawn[2 * i], [drawn[2 * i + 1]]


def _stackable(batches: list[tuple[Batch, list[Batch]]]) -> bool:
    first_inner, first_metas = batches[0]
    for inner, metas in batches:
        if len(metas) != len(first_metas):
            return False
        pairs = [(inner, first_inner), *zip(metas, first_metas)]
        if any(a[0].shape != b[0].shape or a[1].shape != b[1].shape for a, b in pairs):
            return False
    return True
