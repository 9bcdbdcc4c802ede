"""MetaLearner: one meta-iteration of any combination of a warp objective and an
initialisation objective, on the shared inner loop.

Read :meth:`MetaLearner.meta_step` top to bottom for the whole algorithm:

1. for each task of the meta-batch, adapt θ from θ_0 by K steps of SGD through the warped
   model (φ frozen), while observers watch the trajectory: the initialisation objective's
   (Leap), WarpGrad's online meta-loss (Algorithm 1) or the replay-buffer recorder
   (Algorithm 2);
2. collect each task's gradient for θ_0 (Leap, Reptile, MAML) and average;
3. update φ: once from the accumulated online gradient, or over the replay buffer (offline);
4. update θ_0.

Warp-Leap = ``WarpGrad`` + ``Leap``; Warp-MAML = ``WarpGrad`` + ``MAML``; Warp-Reptile =
``WarpGrad`` + ``Reptile``; Leap, MAML, Reptile alone have ``warp=None``; WarpGrad with a fixed
initialisation has ``init=None``.

Example:
    >>> import torch.nn.functional as F
    >>> from warpgrad import Leap, MetaLearner, WarpGrad, mlp, sine_tasks
    >>> learner = MetaLearner(mlp(), F.mse_loss, warp=WarpGrad(), init=Leap(), steps=5,
    ...                       inner_lr=0.01)
    >>> stats = learner.meta_step(sine_tasks(4, torch.Generator().manual_seed(0)))
    >>> sorted(stats)
    ['adapt_loss_first', 'adapt_loss_last', 'warp_loss']
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from warpgrad.algorithms.base import InitObjective, TaskRun
from warpgrad.algorithms.warpgrad import WarpGrad, _OnlineAccumulator
from warpgrad.engine.adapt import Adaptation, LossFn, Observer, adapt
from warpgrad.engine.buffer import ReplayBuffer
from warpgrad.engine.inner_sgd import Granularity, InnerSGD
from warpgrad.models.warped import WarpedModel
from warpgrad.tasks.base import Task

OptimizerName = Literal["sgd", "adam"]


@dataclass
class _Watchers:
    """The observers of one task's adaptation in a meta-iteration."""

    init: Observer | None = None
    online: _OnlineAccumulator | None = None
    observers: list[Observer] = field(default_factory=list)


class MetaLearner:
    """Meta-learns a warped model's φ and/or θ_0 over tasks.

    Args:
        model: the :class:`WarpedModel`; its task parameters are θ_0, its warps φ.
        loss_fn: ``(prediction, target) -> scalar``.
        steps: K, SGD steps per task during meta-training.
        warp: the objective for φ (:class:`WarpGrad`) or ``None`` to keep φ fixed.
        init: the objective for θ_0 (Leap, Reptile, MAML) or ``None`` to keep θ_0 fixed.
        inner_lr, momentum: the inner optimiser, SGD with optional momentum.
        learn_lr, learn_momentum, granularity: meta-learn the inner optimiser's rates (by the
            warp objective when there is one, else by the init objective, as in Meta-SGD).
        warp_lr, init_lr: meta learning rates for φ and θ_0.
        rate_lr: meta learning rate of the learned inner rates (default: that of the
            objective that trains them); per-parameter rates often need a smaller one.
        meta_optimizer: ``"sgd"`` (the paper's Omniglot protocol) or ``"adam"``.
        init_lr_anneal: anneal ``init_lr`` linearly to 0 over this many meta-iterations
            (Reptile's outer step-size schedule); ``None`` keeps it constant.
        warps_by_init: meta-learn the warp layers with the *init* objective's gradient
            instead of WarpGrad's (T-Net: linear transforms learned through MAML's
            adaptation); needs ``warp=None``.
        seed: seeds every batch draw and buffer shuffle of this learner.

    The meta-optimisers come from the model's backend (``model.backend.optimizer``).

    With neither objective, :meth:`meta_step` only adapts: the "no meta-learning" baseline.
    """

    def __init__(
        self,
        model: WarpedModel,
        loss_fn: LossFn,
        *,
        steps: int,
        warp: WarpGrad | None = None,
        init: InitObjective | None = None,
        inner_lr: float = 0.1,
        momentum: float = 0.0,
        learn_lr: bool = False,
        learn_momentum: bool = False,
        granularity: Granularity = "tensor",
        warp_lr: float = 0.1,
        init_lr: float = 0.1,
        rate_lr: float | None = None,
        meta_optimizer: OptimizerName = "sgd",
        init_lr_anneal: int | None = None,
        warps_by_init: bool = False,
        seed: int = 0,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if warps_by_init and (warp is not None or init is None or not model.warp_names):
            raise ValueError("warps_by_init needs an init objective, no warp objective and a "
                             "model with warp layers")
        if warp is not None and not model.warp_names and not learn_lr and not learn_momentum:
            raise ValueError("a warp objective needs warp layers: the model has none "
                             "(name them in WarpedModel(module, warps=[...]))")
        if (warp is not None and warp.share_step and warp.variant == "exact"
                and init is not None and init.differentiable):
            raise ValueError(
                "WarpGrad(share_step=True) with the exact variant cannot be combined with a "
                "second-order initialisation objective (MAML): the adaptation's step graph "
                "would carry φ's meta-gradient back through θ_k into the adaptation, while "
                "WarpGrad holds θ_k constant. Use share_step=False or the first-order variant")
        self.model = model
        self.loss_fn = loss_fn
        self.steps = steps
        self.warp = warp
        self.init = init
        reference = next(model.parameters())
        self.optimizer = InnerSGD(model.task_spec, inner_lr, momentum, learn_lr=learn_lr,
                                  learn_momentum=learn_momentum, granularity=granularity,
                                  dtype=reference.dtype).to(reference.device)
        self.generator = torch.Generator().manual_seed(seed)
        learned_rates = [p for p in self.optimizer.parameters() if p.requires_grad]
        warp_params = list(model.warp_parameters().values())
        init_params = list(model.task_parameters().values())
        self._init_meta_parameters: tuple[Tensor, ...] = ()
        if warp is None:
            if warps_by_init:
                init_params += warp_params
            self._init_meta_parameters = tuple(
                learned_rates + (warp_params if warps_by_init else []))
        if meta_optimizer not in model.backend.optimizers:
            raise ValueError(f"meta_optimizer must be 'sgd' or 'adam', got {meta_optimizer!r}")

        def optimizer(params: list[Tensor], lr: float, rates: bool) -> torch.optim.Optimizer:
            groups = [{"params": params}] if params else []
            if rates and learned_rates:
                groups.append({"params": learned_rates, "lr": rate_lr or lr})
            return model.backend.optimizer(meta_optimizer, groups, lr)

        self.warp_optimizer = (optimizer(warp_params, warp_lr, rates=True)
                               if warp is not None else None)
        self.init_optimizer = (optimizer(init_params, init_lr, rates=warp is None)
                               if init is not None else None)
        self.init_schedule = None
        if init_lr_anneal is not None and self.init_optimizer is not None:
            if init_lr_anneal < 1:
                raise ValueError(f"init_lr_anneal must be positive, got {init_lr_anneal}")
            self.init_schedule = torch.optim.lr_scheduler.LambdaLR(
                self.init_optimizer, lambda t: max(0.0, 1.0 - t / init_lr_anneal))

    # -- adaptation ------------------------------------------------------------------------

    def adapt(self, task: Task, steps: int | None = None, *, observers: Sequence[Observer] = ()
              ) -> Adaptation:
        """Adapt from the current θ_0 (no meta-gradients); returns θ_K and the losses."""
        return adapt(self.model, self.model.init_theta(), task, self.loss_fn, self.optimizer,
                     self.steps if steps is None else steps, observers=observers,
                     generator=self.generator)

    @torch.no_grad()
    def evaluate(self, task: Task, steps: int | None = None) -> dict[str, float]:
        """Adapt on ``task``'s training data, then score its held-out data.

        Batch norm follows the learner's policy: per-batch statistics (the built-in default,
        transductive as in MAML), or running statistics gathered during this task's
        adaptation only, never shared across tasks.

        Returns ``train_loss`` (first and last adaptation loss, and the area under the
        training-loss curve: their mean), ``test_loss`` and, for classification targets
        (integer labels), ``test_accuracy`` in [0, 1]."""
        with torch.enable_grad():
            result = self.adapt(task, steps)
        x, y = task.test_batch()
        training = self.model.training
        self.model.eval()  # batch norm with running statistics uses this task's own
        try:
            prediction = self.model(x, result.theta, buffers=result.buffers)
        finally:
            self.model.train(training)
        metrics = {"test_loss": self.loss_fn(prediction, y).item()}
        if not y.is_floating_point() and isinstance(prediction, Tensor) and prediction.dim() == 2:
            metrics["test_accuracy"] = (prediction.argmax(-1) == y).float().mean().item()
        if len(result.losses):
            metrics["train_loss_first"] = result.losses[0].item()
            metrics["train_loss_last"] = result.losses[-1].item()
            metrics["train_loss_auc"] = result.losses.mean().item()
        return metrics

    # -- one meta-iteration -----------------------------------------------------------------

    def meta_step(self, tasks: Sequence[Task]) -> dict[str, float]:
        """One meta-iteration over a meta-batch of tasks; updates φ and θ_0 in place.

        Returns ``adapt_loss_first``/``adapt_loss_last`` (mean training loss at θ_0 and
        θ_{K-1}) and ``warp_loss`` (mean WarpGrad meta-loss) when there is a warp objective.
        """
        if not tasks:
            raise ValueError("meta_step needs at least one task")
        if not all(isinstance(t, Task) for t in tasks):
            wrong = next(t for t in tasks if not isinstance(t, Task))
            raise TypeError(f"meta_step needs a sequence of Task (warpgrad.Task(x_train, "
                            f"y_train, x_test, y_test)), one per task of the meta-batch; got "
                            f"an item of type {type(wrong).__name__}")
        for opt in (self.warp_optimizer, self.init_optimizer):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        scale = 1.0 / len(tasks)
        buffer = self._replay_buffer(len(tasks))  # Algorithm 2's, or None
        # every task's observers first: their draws from the generator come before any
        # adaptation's
        watchers = [self._watchers(i, task, scale, buffer) for i, task in enumerate(tasks)]
        differentiable = self.init is not None and self.init.differentiable
        theta0_grad, first, last, online_losses = None, [], [], []
        for task, watch in zip(tasks, watchers):
            theta0 = self.model.init_theta().detach().requires_grad_(differentiable)
            result = adapt(self.model, theta0, task, self.loss_fn, self.optimizer,
                           self._adaptation_steps(), observers=watch.observers,
                           create_graph=differentiable, generator=self.generator)
            if len(result.losses):  # read at the end: a read here would make the host wait
                first.append(result.losses[0].detach())
                last.append(result.losses[-1].detach())
            if watch.online is not None:
                online_losses += watch.online.losses
            if self.init is not None:
                run = TaskRun(self.model, self.loss_fn, self.optimizer, task, theta0, result,
                              self.generator, scale, self._init_meta_parameters)
                grad = self.init.task_gradient(run, watch.init) * scale
                theta0_grad = grad if theta0_grad is None else theta0_grad + grad
            del result  # frees MAML's graph before the next task
        warp_losses = self._update_warps(buffer, tasks, online_losses)
        self._update_init(theta0_grad)
        return _summary(first, last, warp_losses)

    def _adaptation_steps(self) -> int:
        """K, or 0 for an initialisation objective that needs no adaptation (pretraining)."""
        if self.warp is None and self.init is not None and not self.init.adapts:
            return 0
        return self.steps

    def _replay_buffer(self, tasks: int) -> ReplayBuffer | None:
        """An empty buffer for the offline objective's points of ``tasks`` tasks."""
        if self.warp is None or self.warp.regime != "offline":
            return None
        reference = next(self.model.parameters())
        return ReplayBuffer(tasks * self.warp.points_per_task(self.steps),
                            self.model.task_spec.numel, with_state=self.optimizer.has_state,
                            device=reference.device, dtype=reference.dtype,
                            storage_dtype=self.warp.buffer_dtype,
                            on_disk=self.warp.buffer_on_disk)

    def _watchers(self, index: int, task: Task, scale: float,
                  buffer: ReplayBuffer | None) -> _Watchers:
        """Task ``index``'s observers: the init objective's, and WarpGrad's online
        accumulator or the buffer's recorder, on the points WarpGrad samples."""
        watch = _Watchers(init=self.init.observer() if self.init is not None else None)
        if self.warp is not None:
            used = self.warp.sample_steps(self.steps, self.generator)
            if self.warp.regime == "online":
                weight = scale / self.warp.points_per_task(self.steps)
                watch.online = self.warp.online_observer(
                    self.model, self.loss_fn, self.optimizer, task, self.generator, weight,
                    steps=used)
            recorder = buffer.recorder(index, steps=used) if buffer is not None else None
            watch.observers = [o for o in (watch.init, watch.online, recorder) if o is not None]
        elif watch.init is not None:
            watch.observers = [watch.init]
        return watch

    def _update_warps(self, buffer: ReplayBuffer | None, tasks: Sequence[Task],
                      online_losses: list[Tensor]) -> list[float]:
        """φ's update: one step on the online gradient, or the offline pass over the
        buffer. Returns the meta-losses it saw."""
        if self.warp is None:
            return []
        if buffer is None:
            self.warp_optimizer.step()
            return torch.stack(online_losses).tolist() if online_losses else []
        return self.warp.offline_update(self.model, self.loss_fn, self.optimizer, buffer,
                                        tasks, self.warp_optimizer, self.generator)

    def _update_init(self, theta0_grad: Tensor | None) -> None:
        """θ_0's update from the meta-batch's averaged gradient."""
        if self.init is None:
            return
        params = self.model.task_parameters()
        for name, g in self.model.task_spec.unflatten(theta0_grad).items():
            params[name].grad = g.clone()
        self.init_optimizer.step()
        if self.init_schedule is not None:
            self.init_schedule.step()

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, inner optimiser, meta-optimisers, RNG state."""
        return {
            "model": self.model.state_dict(),
            "inner_optimizer": self.optimizer.state_dict(),
            "warp_optimizer": None if self.warp_optimizer is None else
            self.warp_optimizer.state_dict(),
            "init_optimizer": None if self.init_optimizer is None else
            self.init_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "init_objective": None if self.init is None else self.init.state_dict(),
            "init_schedule": None if self.init_schedule is None else
            self.init_schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # torch.optim keeps the given state tensors as they are; copy them so this learner
        # never shares optimiser state with the one the dict came from
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["inner_optimizer"])
        for opt, key in ((self.warp_optimizer, "warp_optimizer"),
                         (self.init_optimizer, "init_optimizer")):
            if opt is not None:
                opt.load_state_dict(state[key])
        self.generator.set_state(state["generator"])
        if self.init is not None:
            self.init.load_state_dict(state["init_objective"])
        if self.init_schedule is not None:
            self.init_schedule.load_state_dict(state["init_schedule"])


def _summary(first: list[Tensor], last: list[Tensor], warp_losses: list[float]
             ) -> dict[str, float]:
    """A meta-iteration's statistics: the mean adaptation loss at θ_0 and θ_{K-1}, and the
    mean WarpGrad meta-loss (each where there is one)."""
    stats = {}
    if first:
        stats["adapt_loss_first"] = sum(torch.stack(first).tolist()) / len(first)
        stats["adapt_loss_last"] = sum(torch.stack(last).tolist()) / len(last)
    if warp_losses:
        stats["warp_loss"] = sum(warp_losses) / len(warp_losses)
    return stats
