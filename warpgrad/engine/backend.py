"""The hot operations of meta-learning, in their reference form.

The engine and the meta-objectives never run a model's passes, draw batches or build
meta-optimisers themselves: they ask the model's :class:`Backend` (``model.backend``). This
class is the reference implementation, plain PyTorch that reads like the maths. The
accelerated one, :class:`warpgrad.accel.AcceleratedBackend`, computes the same numbers
faster; :func:`warpgrad.accel.convert` puts it on a model, and nothing here knows it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, overload

import torch
from torch import Tensor, nn
from torch.func import functional_call

if TYPE_CHECKING:
    from warpgrad.engine.inner_sgd import InnerSGD
    from warpgrad.models.warped import WarpedModel
    from warpgrad.tasks.base import Batch, Task

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(prediction, target) -> scalar``, e.g. ``F.cross_entropy`` or ``F.mse_loss``."""

WarpBatches = tuple["Batch", list["Batch"]]
"""What WarpGrad's meta-loss at one point uses: the batch of the one SGD step, and the
batches the loss after that step is averaged over."""


@overload
def detached(t: Tensor) -> Tensor: ...
@overload
def detached(t: None) -> None: ...
def detached(t: Tensor | None) -> Tensor | None:
    """``t`` without its graph: ``t.detach()`` where autograd tracks ``t``, else ``t`` itself
    (a detach is an operator the host dispatches, and most tensors on the engine's paths
    come back untracked)."""
    return t.detach() if t is not None and t.requires_grad else t


@dataclass
class Step:
    """One SGD step of adaptation from θ_k: ``loss`` (0-d, detached) and ``grad`` ``[P]`` at
    θ_k, and where the step lands, ``theta`` θ_{k+1} ``[P]`` with its optimiser ``state``.
    ``grad`` keeps its graph when the step was asked to keep it."""

    loss: Tensor
    grad: Tensor
    theta: Tensor
    state: Tensor | None


class Backend:
    """How the model's passes, the batch draws and the meta-optimisers run.

    Every method has one meaning, which other backends keep exactly; they may only compute
    it faster (the tests compare them to 1e-10 in float64).
    """

    optimizers: ClassVar[Mapping[str, type[torch.optim.Optimizer]]] = {
        "sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    """The meta-optimisers by name."""

    def forward(self, module: nn.Module, params: dict[str, Tensor],
                buffers: dict[str, Tensor], x: Tensor, *args: Any) -> Any:
        """``module(x, *args)`` with its parameters and buffers replaced by ``params`` and
        ``buffers``, without mutating it. A tensor the module holds under several names
        (tied weights) takes the value given under its first name in all of them."""
        return call_with(module, params, buffers, (x, *args), tensor_aliases(module))

    def adaptation_step(
        self,
        model: WarpedModel,
        loss_fn: LossFn,
        optimizer: InnerSGD,
        theta: Tensor,
        state: Tensor | None,
        batch: Batch,
        *,
        phi: Mapping[str, Tensor] | None = None,
        buffers: dict[str, Tensor] | None = None,
        create_graph: bool = False,
        keep_grad_graph: bool = False,
        warp_step: bool = False,
    ) -> Step:
        """One SGD step from ``theta`` ``[P]`` on ``batch``, through the model with warp
        parameters ``phi`` and the task's ``buffers``.

        ``create_graph``: the step is differentiable in θ_k and whatever the model reads
        (MAML's adaptation). ``keep_grad_graph``: only the gradient keeps its graph, the step
        itself is taken with it detached. ``warp_step``: the step is also WarpGrad's one
        step at θ_k (the online objective's shared step); here that changes nothing.
        """
        del warp_step
        x, y = batch
        if not create_graph:
            theta = theta.detach().requires_grad_()
        loss = loss_fn(model(x, theta, phi, buffers=buffers), y)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph or keep_grad_graph)
        if create_graph:
            next_theta, next_state = optimizer.step(theta, grad, state)
        else:
            with torch.no_grad():
                next_theta, next_state = optimizer.step(theta, grad, state)
        return Step(loss.detach(), grad, next_theta, next_state)

    def loss_after_step(
        self,
        task_loss: Callable[[Tensor], Tensor],
        step: Callable[[Tensor, Tensor], Tensor],
        meta_loss: Callable[[Tensor], Tensor],
        theta: Tensor,
        *,
        differentiable: bool,
    ) -> Tensor:
        """``meta_loss(step(θ, ∇task_loss(θ)))`` at a constant ``theta`` ``[P]``: the loss
        after one SGD step from θ. ``differentiable``: the gradient of the step is itself
        differentiated (WarpGrad's exact variant); otherwise it is held constant."""
        grad = torch.func.grad(task_loss)(theta)
        if not differentiable:
            grad = grad.detach()
        return meta_loss(step(theta, grad))

    def backward(self, loss_of: Callable[..., Tensor], args: Sequence[Any],
                 inputs: Sequence[Tensor]) -> Tensor:
        """Accumulates the gradient of ``loss_of(*args)`` into ``inputs``' ``.grad``;
        returns the loss, detached. ``loss_of`` is a pure function of the tensors in
        ``args`` (which may nest them in tuples, lists and ``None``)."""
        loss = loss_of(*args)
        torch.autograd.backward(loss, inputs=list(inputs))
        return loss.detach()

    def train_batches(self, task: Task, count: int,
                      generator: torch.Generator | None) -> Iterator[Batch]:
        """``count`` calls of ``task.train_batch(generator)``, made as they are consumed (a
        consumer may draw from ``generator`` in between)."""
        for _ in range(count):
            yield task.train_batch(generator)

    def warp_batches(self, tasks: Sequence[Task], points: Iterable[tuple[int, int]],
                     generator: torch.Generator | None) -> Iterator[WarpBatches]:
        """``tasks[i].warp_batches(step, generator)`` for each ``(i, step)`` of ``points``,
        in order, made as they are consumed."""
        for index, step in points:
            yield tasks[index].warp_batches(step, generator)

    def optimizer(self, name: str, groups: list[dict[str, Any]], lr: float
                  ) -> torch.optim.Optimizer:
        """A meta-optimiser by name (``"sgd"`` or ``"adam"``) over parameter ``groups``."""
        if name not in self.optimizers:
            raise ValueError(f"meta_optimizer must be one of {sorted(self.optimizers)}, "
                             f"got {name!r}")
        return self.optimizers[name](groups, lr=lr)


REFERENCE = Backend()
"""The reference backend every model starts with."""


def tensor_aliases(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """For each parameter or buffer that ``module`` holds in more than one place, its first
    name (the one ``named_parameters()`` gives) and the names of its other places. A
    submodule reached by two paths is one place: replacing a place twice would leave the
    module holding the replacement after the call (pytorch/pytorch#164759)."""
    aliases: dict[str, tuple[str, ...]] = {}
    for named in (module.named_parameters, module.named_buffers):
        places: dict[int, dict[tuple[int, str], str]] = {}
        for name, tensor in named(remove_duplicate=False):
            owner, _, attr = name.rpartition(".")
            place = (id(module.get_submodule(owner)), attr)
            places.setdefault(id(tensor), {}).setdefault(place, name)
        for names in places.values():
            if len(names) > 1:
                first, *others = names.values()
                aliases[first] = (first, *others)
    return aliases


def call_with(module: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
              args: tuple[Any, ...], aliases: Mapping[str, tuple[str, ...]]) -> Any:
    """``module(*args)`` with ``params`` and ``buffers`` (by first name) replacing its own
    in every place ``aliases`` (:func:`tensor_aliases`) lists, each place once."""
    if aliases:
        params = {a: v for n, v in params.items() for a in aliases.get(n, (n,))}
        buffers = {a: v for n, v in buffers.items() for a in aliases.get(n, (n,))}
    return functional_call(module, (params, buffers), args, strict=False, tie_weights=False)
