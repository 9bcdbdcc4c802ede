"""The accelerated backend: the reference backend's operations, the same numbers, faster.

What it changes, operation by operation (figures in docs/performance.md):

- every pass: θ and φ go straight into the places the module holds its tensors in
  (:mod:`~warpgrad.accel.slots`), not through ``functional_call``'s walk by name;
  under ``precision="bf16"`` the model's forward runs under bfloat16 autocast,
  except WarpGrad's one step at θ_k, which stays float32;
- passes whose gradient is differentiated again (MAML's adaptation, a kept step graph,
  WarpGrad's exact step) open :data:`~warpgrad.accel.scopes.SECOND_ORDER`, so that the
  converted layers compute second derivatives of their own; the exact step's loss after the
  step opens :data:`~warpgrad.accel.scopes.ARGMAX_ONLY`;
- WarpGrad's step gradient: plain autograd for the first-order variant outside ``vmap``,
  and ``torch.func.grad``'s transform without the ``torch._dynamo`` import for the exact one
  (:func:`~warpgrad.accel.autograd.func_grad`);
- with ``cuda_graphs=True``, adaptation steps and offline meta-gradients replay from CUDA
  graphs (:mod:`~warpgrad.accel.cuda_graphs`);
- batch draws are made a window at a time (:mod:`~warpgrad.accel.prefetch`);
- the meta-optimisers are ``torch.optim``'s without its ``torch._dynamo`` import
  (:mod:`~warpgrad.accel.optim`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from warpgrad.accel import optim, prefetch, threads
from warpgrad.accel.autograd import func_grad
from warpgrad.accel.cuda_graphs import GraphCache, reads_of
from warpgrad.accel.scopes import ARGMAX_ONLY, META_BACKWARD_BF16, SECOND_ORDER
from warpgrad.accel.slots import Slots
from warpgrad.accel.transforms import in_any_transform
from warpgrad.engine.backend import (
    Backend,
    LossFn,
    Step,
    WarpBatches,
    call_with,
    tensor_aliases,
)
from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.models.warped import WarpedModel
from warpgrad.tasks.base import Batch, Task

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class AcceleratedBackend(Backend):
    """The reference :class:`~warpgrad.engine.backend.Backend` with the speed paths of the
    module docstring. One per model (it keeps that model's CUDA graphs).

    Args:
        precision: ``"fp32"``, or ``"bf16"`` to run the forward pass (and so its backward)
            under bfloat16 autocast; parameters, θ, the optimisers and the outputs stay
            float32. Gradients are then only close to float32's, so it is off by default.
        cuda_graphs: replay the fixed-shape passes from CUDA graphs (a GPU switch; on the
            CPU the same plumbing runs without capture). Passes that cannot be replayed run
            eagerly, with a ``RuntimeWarning`` saying why: MAML's differentiable adaptation,
            a kept step graph (``WarpGrad(share_step=True)``, exact), a model with running
            batch-norm statistics.
        prefetch_mb: memory (MB) for batches drawn ahead of the steps that use them
            (default: 6 on the CPU, where a window that stays in cache is fastest, 32 on a
            GPU); ``0`` draws one batch at a time.
    """

    optimizers: ClassVar[Mapping[str, type[torch.optim.Optimizer]]] = {
        "sgd": optim.SGD, "adam": optim.Adam}

    def __init__(self, precision: Precision = "fp32", cuda_graphs: bool = False,
                 prefetch_mb: float | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if prefetch_mb is not None and not prefetch_mb >= 0:
            raise ValueError(f"prefetch_mb must be None or at least 0, got {prefetch_mb}")
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.prefetch_mb = prefetch_mb
        self.graphs = GraphCache() if cuda_graphs else None
        self._float32 = 0  # depth of open full-precision blocks
        self._said: set[str] = set()  # the reasons already given for running eagerly

    def __getstate__(self) -> dict[str, Any]:
        # captured graphs read the original model's memory: a copy captures its own
        return {**self.__dict__, "graphs": GraphCache() if self.cuda_graphs else None}

    def __repr__(self) -> str:
        return (f"AcceleratedBackend(precision={self.precision!r}, "
                f"cuda_graphs={self.cuda_graphs}, prefetch_mb={self.prefetch_mb})")

    # -- the model's forward pass ------------------------------------------------------------

    def forward(self, module: nn.Module, params: dict[str, Tensor],
                buffers: dict[str, Tensor], x: Tensor, *args: Any) -> Any:
        if self.precision == "fp32" or self._float32:
            return self._call(module, params, buffers, x, *args)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self._call(module, params, buffers, x, *args)
        return _to_float32(out)

    def _call(self, module: nn.Module, params: dict[str, Tensor],
              buffers: dict[str, Tensor], x: Tensor, *args: Any) -> Any:
        # the reference walks every submodule on every call (ties, then functional_call's
        # swap by name), most of a small network's forward; the layout rarely changes
        slots = _SLOTS.get(module)
        if slots is None or not (slots.current() and slots.holds(params, buffers)):
            slots = _SLOTS[module] = Slots(module)
            if not slots.holds(params, buffers):  # names the module does not hold
                return call_with(module, params, buffers, (x, *args), tensor_aliases(module))
        return slots.call(module, (params, buffers), (x, *args))

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """Inside the block the forward runs in float32 even with ``precision="bf16"``: for
        passes whose rounding the result cannot absorb (WarpGrad's one step at θ_k). The
        backward through such a pass that builds no graph (the meta-gradient's) still runs
        its convolutions in bf16 (:data:`~warpgrad.accel.scopes.META_BACKWARD_BF16`)."""
        scope = META_BACKWARD_BF16 if self.precision == "bf16" else nullcontext()
        self._float32 += 1
        try:
            with scope:
                yield
        finally:
            self._float32 -= 1

    # -- adaptation --------------------------------------------------------------------------

    def adaptation_step(self, model: WarpedModel, loss_fn: LossFn, optimizer: InnerSGD,
                        theta: Tensor, state: Tensor | None, batch: Batch, *,
                        phi: Mapping[str, Tensor] | None = None,
                        buffers: dict[str, Tensor] | None = None, create_graph: bool = False,
                        keep_grad_graph: bool = False, warp_step: bool = False) -> Step:
        threads.apply()
        twice = create_graph or keep_grad_graph
        if self.graphs is not None:
            # a graph replays fixed kernels: not for graphs kept for a second derivative, nor
            # for batch-norm statistics updated in place
            if not twice and not buffers:
                return self._graphed_step(model, loss_fn, optimizer, theta, state, batch, phi,
                                          warp_step)
            self._say_eager("differentiable adaptation (MAML) or a kept step graph" if twice
                            else "running batch-norm statistics")
        with SECOND_ORDER if twice else nullcontext(), (
                self.full_precision() if warp_step else nullcontext()):
            return super().adaptation_step(
                model, loss_fn, optimizer, theta, state, batch, phi=phi, buffers=buffers,
                create_graph=create_graph, keep_grad_graph=keep_grad_graph)

    def _graphed_step(self, model: WarpedModel, loss_fn: LossFn, optimizer: InnerSGD,
                      theta: Tensor, state: Tensor | None, batch: Batch,
                      phi: Mapping[str, Tensor] | None, warp_step: bool) -> Step:
        """:meth:`adaptation_step`, the SGD update included (a replay is one launch, the
        update outside it three), replayed from a CUDA graph."""
        precise = self.full_precision if warp_step else nullcontext

        def step(theta: Tensor, x: Tensor, y: Tensor, *state: Tensor) -> list[Tensor]:
            with precise():
                s = Backend.adaptation_step(self, model, loss_fn, optimizer, theta,
                                            state[0] if state else None, (x, y), phi=phi)
            return [s.loss, s.grad, s.theta, *(() if s.state is None else (s.state,))]

        x, y = batch
        args = (theta, x, y) if state is None else (theta, x, y, state)
        reads = reads_of(model, optimizer) + list((phi or {}).values())
        name = ("adapt", loss_fn, warp_step, self.precision)
        loss, grad, *landed = self.graphs(name, step, args, reads)
        return Step(loss, grad, landed[0], landed[1] if len(landed) > 1 else None)

    def _say_eager(self, reason: str) -> None:
        if reason not in self._said:
            self._said.add(reason)
            warnings.warn(f"cuda_graphs: adaptation steps run eagerly for {reason}",
                          RuntimeWarning, stacklevel=4)

    # -- WarpGrad's meta-loss ----------------------------------------------------------------

    def loss_after_step(self, task_loss: Callable[[Tensor], Tensor],
                        step: Callable[[Tensor, Tensor], Tensor],
                        meta_loss: Callable[[Tensor], Tensor], theta: Tensor, *,
                        differentiable: bool) -> Tensor:
        with self.full_precision():
            if not differentiable and not in_any_transform():
                # plain autograd: cheaper than the transform. Not for the exact variant:
                # there θ would be a leaf of the step's graph, and a backward restricted to
                # the meta-parameters leaves that graph's θ side alive, while an
                # unrestricted one computes θ's unneeded terms
                with torch.enable_grad():
                    leaf = theta.detach().requires_grad_()
                    (grad,) = torch.autograd.grad(task_loss(leaf), leaf)
            else:
                with SECOND_ORDER if differentiable else nullcontext():
                    grad = func_grad(task_loss, theta)
                if not differentiable:
                    grad = grad.detach()
        stepped = step(theta, grad)
        # the step's graph is held until this loss's backward reaches it; under vmap the
        # exact variant's batch norm stays the core's, exact to second order, here too
        scope = (SECOND_ORDER if in_any_transform() else ARGMAX_ONLY) if differentiable else (
            nullcontext())
        with scope:
            return meta_loss(stepped)

    def backward(self, loss_of: Callable[..., Tensor], args: Sequence[Any],
                 inputs: Sequence[Tensor]) -> Tensor:
        threads.apply()
        if self.graphs is None:
            return super().backward(loss_of, args, inputs)
        flat, spec = tree_flatten(list(args))
        positions = [i for i, leaf in enumerate(flat) if isinstance(leaf, Tensor)]
        inputs = list(inputs)

        def update(*tensors: Tensor) -> list[Tensor | None]:
            leaves = list(flat)
            for i, t in zip(positions, tensors):
                leaves[i] = t
            loss = loss_of(*tree_unflatten(leaves, spec))
            return [loss.detach(), *torch.autograd.grad(loss, inputs, allow_unused=True)]

        key, modules = _identity(loss_of)
        name = ("backward", key, str(spec), self.precision)
        # the gradients stay the graph's own tensors (a copy each would be a launch each),
        # valid until the graph's next replay, as in-place gradients are until the next
        # backward; the loss is kept past that
        loss, *grads = self.graphs(name, update, [flat[i] for i in positions],
                                   inputs + reads_of(*modules), fresh=False)
        for p, g in zip(inputs, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        return loss.clone()

    # -- batch draws -------------------------------------------------------------------------

    def train_batches(self, task: Task, count: int,
                      generator: torch.Generator | None) -> Iterator[Batch]:
        window = self._window(task)
        if generator is None or window <= 1 or not prefetch.plannable(task):
            return super().train_batches(task, count, generator)
        return prefetch.lookahead([(task, "train")] * count, generator, window)

    def warp_batches(self, tasks: Sequence[Task], points: Iterable[tuple[int, int]],
                     generator: torch.Generator | None) -> Iterator[WarpBatches]:
        points = list(points)
        own = any(type(t).warp_batches is not Task.warp_batches or not prefetch.plannable(t)
                  for t in tasks)
        if generator is None or own or not points:
            return super().warp_batches(tasks, points, generator)
        # a point draws twice, its step's batch and the batch of the loss after the step,
        # which are drawn together even when nothing is drawn ahead
        window = max(1, min(self._window(t) for t in tasks) // 2)
        requests = [(tasks[i], split) for i, _ in points for split in ("train", "meta")]
        drawn = prefetch.lookahead(requests, generator, 2 * window)
        return ((next(drawn), [next(drawn)]) for _ in points)

    def _window(self, task: Task) -> int:
        """Batches of ``task`` drawn at a time; 0 when drawing ahead is off."""
        budget = self.prefetch_mb
        if budget is None:
            budget = 6.0 if task.device.type == "cpu" else 32.0
        return prefetch.window_of(task, budget) if budget > 0 else 0


def _identity(fn: Callable[..., Any]) -> tuple[Hashable, list[nn.Module]]:
    """What a graph of ``fn`` is keyed by, and the modules it reads. ``fn`` is a function,
    a bound method or a ``functools.partial`` of one: it is known by its function, the
    identity of what it is bound to and those objects' plain settings (so a changed
    ``WarpGrad.variant`` is another graph)."""
    bound: list[Any] = []
    while isinstance(fn, partial):
        bound += [*fn.args, *fn.keywords.values()]
        fn = fn.func
    if hasattr(fn, "__self__"):
        bound.append(fn.__self__)
        fn = fn.__func__
    modules = [b for b in bound if isinstance(b, nn.Module)]
    key = (fn, *(_settings(b) for b in bound))
    return key, modules


def _settings(obj: Any) -> Hashable:
    if isinstance(obj, nn.Module) or not hasattr(obj, "__dict__"):
        return id(obj)
    plain = (bool, int, float, str, type(None))
    return (id(obj), *sorted((k, v) for k, v in vars(obj).items() if isinstance(v, plain)))


def _to_float32(value: object) -> object:
    """Autocast outputs back to float32 (tensors, and tensors inside tuples and lists)."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float32(v) for v in value)
    return value


_SLOTS: weakref.WeakKeyDictionary[nn.Module, Slots] = weakref.WeakKeyDictionary()
"""Where each converted module holds its tensors (:class:`~warpgrad.accel.slots.Slots`),
found at its first forward and again when its layout changes."""
