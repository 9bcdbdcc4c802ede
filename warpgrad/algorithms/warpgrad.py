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
    >>> import torch, torch.nn.functional as F
    >>> from warpgrad import Leap, MetaLearner, WarpGrad, mlp, sine_tasks
    >>> model = mlp()  # a linear warp after each hidden layer
    >>> learner = MetaLearner(model, F.mse_loss, warp=WarpGrad("exact"), init=Leap(), steps=5,
    ...                       inner_lr=0.01, warp_lr=1e-3)
    >>> phi = {n: p.detach().clone() for n, p in model.warp_parameters().items()}
    >>> stats = learner.meta_step(sine_tasks(4, torch.Generator().manual_seed(0)))
    >>> stats["warp_loss"] > 0, any(bool((p != phi[n]).any())
    ...                             for n, p in model.warp_parameters().items())
    (True, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from warpgrad.engine.adapt import StepRecord
from warpgrad.engine.backend import LossFn, WarpBatches
from warpgrad.engine.buffer import Points, ReplayBuffer
from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.models.batch_norm import EXACT_UNDER_VMAP
from warpgrad.models.warped import WarpedModel
from warpgrad.tasks.base import Batch, Task

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
            one at a time (same result). Where vmap cannot batch them, a ``RuntimeWarning``
            says why and they go one at a time: batch shapes that differ across the points,
            a model that keeps running batch-norm statistics, or the exact variant of a
            model with ``nn.BatchNorm*`` layers, whose second-order gradient PyTorch's vmap
            gets wrong (the library's own batch norm, :mod:`warpgrad.models.batch_norm`,
            stays exact).
        chunk_size: bound the vmap's memory by evaluating at most this many points at once.
        buffer_dtype: how the offline replay buffer stores points (default: the model's
            dtype; a 16-bit float dtype such as ``torch.float16`` halves its memory, rounding
            θ_k).
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
        self._said: set[str] = set()  # the fallbacks already warned about

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
    ) -> Tensor:
        """The meta-loss at one point θ_k ``[P]`` (a constant); differentiable in φ and the
        optimiser's meta-parameters. ``meta_batches``: the loss after the step is averaged
        over them (several for continual learning). Works under ``torch.func.vmap``."""
        theta = theta.detach()
        state = None if state is None else state.detach()

        def meta_loss(th: Tensor) -> Tensor:
            return torch.stack([loss_fn(model(x, th), y) for x, y in meta_batches]).mean()

        if self.variant == "no-step":
            return meta_loss(theta)
        x, y = inner_batch
        # first-order: φ is a constant of the step, its gradient flows only through meta_loss
        phi = None if self.variant == "exact" else {
            n: p.detach() for n, p in model.warp_parameters().items()}

        def task_loss(th: Tensor) -> Tensor:
            return loss_fn(model(x, th, phi), y)

        def sgd_step(th: Tensor, grad: Tensor) -> Tensor:
            return optimizer.step(th, grad, state)[0]

        return model.backend.loss_after_step(task_loss, sgd_step, meta_loss, theta,
                                             differentiable=self.variant == "exact")

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
        pairs = _pairs(points.task_index, points.step)
        batches = list(model.backend.warp_batches(tasks, pairs, generator))
        return self._batches_loss(model, loss_fn, optimizer, points.thetas, points.states,
                                  batches)

    def _batches_loss(self, model: WarpedModel, loss_fn: LossFn, optimizer: InnerSGD,
                      thetas: Tensor, states: Tensor | None,
                      batches: list[WarpBatches]) -> Tensor:
        """:meth:`points_loss` on batches already drawn: points ``thetas`` ``[n, P]``."""
        if self.batched and len(thetas) > 1 and self._batchable(model, batches):
            inner_x = torch.stack([b[0][0] for b in batches])
            inner_y = torch.stack([b[0][1] for b in batches])
            meta_x = [torch.stack([b[1][j][0] for b in batches]) for j in range(len(batches[0][1]))]
            meta_y = [torch.stack([b[1][j][1] for b in batches]) for j in range(len(batches[0][1]))]

            def one(theta, state, ix, iy, mx, my):
                return self.point_loss(model, loss_fn, optimizer, theta, state, (ix, iy),
                                       list(zip(mx, my)))

            state_dim = None if states is None else 0
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
        return self._why_not_vmapped(model) is None

    def _why_not_vmapped(self, model: WarpedModel) -> str | None:
        if model.has_buffers:
            return "the model keeps running batch-norm statistics, which vmap cannot update"
        # vmap gets the fused batch norm's second-order gradient wrong (pytorch/functorch#534:
        # 2.3e-3 off on Conv4 in float64); the library's own layers avoid it
        norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        fused = any(isinstance(m, norms) and not isinstance(m, EXACT_UNDER_VMAP)
                    for m in model.module.modules())
        if self.variant == "exact" and fused:
            return ("the exact variant of a model with PyTorch's own batch norm, whose "
                    "second-order gradient vmap gets wrong (use warpgrad.models.batch_norm)")
        return None

    def _batchable(self, model: WarpedModel, batches: list[WarpBatches]) -> bool:
        """Whether the points can go through one vmap; says once why not, if not."""
        reason = self._why_not_vmapped(model)
        if reason is None and not _stackable(batches):
            reason = "the points' batches differ in shape"
        if reason is not None and reason not in self._said:
            self._said.add(reason)
            warnings.warn(f"WarpGrad(batched=True) evaluates points one at a time: {reason}",
                          RuntimeWarning, stacklevel=3)
        return reason is None

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
        # does not matter
        keys = buffer.task_index[:n] * (int(buffer.step[:n].max()) + 1) + buffer.step[:n]
        canonical = torch.argsort(keys, stable=True)
        inputs = [p for group in meta_optimizer.param_groups for p in group["params"]]
        update_loss = partial(self._batches_loss, model, loss_fn, optimizer)
        for _ in range(self.epochs):
            order = canonical[torch.randperm(n, generator=generator)]
            drawn = model.backend.warp_batches(
                tasks, _pairs(buffer.task_index[order], buffer.step[order]), generator)
            for chunk in order.to(buffer.index_device).split(self.points_per_update):
                meta_optimizer.zero_grad(set_to_none=True)
                thetas, states = buffer.read(chunk)
                batches = [next(drawn) for _ in range(len(chunk))]
                loss = model.backend.backward(update_loss, (thetas, states, batches), inputs)
                meta_optimizer.step()
                history.append(loss)
        # read once at the end: a read per update would make the host wait for the device
        return torch.stack(history).tolist() if history else []


class _OnlineAccumulator:
    needs_final_loss = False

    def __init__(self, objective: WarpGrad, model: WarpedModel, loss_fn: LossFn,
                 optimizer: InnerSGD, task: Task, generator: torch.Generator | None,
                 scale: float, steps: Collection[int] | None) -> None:
        self.objective, self.model, self.loss_fn = objective, model, loss_fn
        self.steps = steps
        self.optimizer, self.task, self.generator, self.scale = optimizer, task, generator, scale
        self.losses: list[Tensor] = []  # read by the learner once per meta-step, not here
        self.reuses_steps = objective.share_step and objective.variant != "no-step"
        self.needs_step_graph = self.reuses_steps and objective.variant == "exact"
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
        if self.reuses_steps and not final:
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


def _stackable(batches: list[WarpBatches]) -> bool:
    first_inner, first_metas = batches[0]
    for inner, metas in batches:
        if len(metas) != len(first_metas):
            return False
        pairs = [(inner, first_inner), *zip(metas, first_metas)]
        if any(a[0].shape != b[0].shape or a[1].shape != b[1].shape for a, b in pairs):
            return False
    return True
