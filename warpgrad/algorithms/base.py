"""What an initialisation meta-objective is: the small part that differs between Leap,
Reptile and MAML. The shared inner loop lives in :mod:`warpgrad.engine.adapt`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from warpgrad.engine.adapt import Adaptation, LossFn, Observer
from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.models.warped import WarpedModel
from warpgrad.tasks.base import Task


@dataclass
class TaskRun:
    """One task's adaptation, as an :class:`InitObjective` sees it afterwards.

    ``theta0`` ``[P]`` is the leaf the adaptation started from (it requires grad when the
    objective is ``differentiable``); ``adaptation.theta`` is θ_K. ``scale`` is the weight
    of this task in the meta-batch average (1 / number of tasks). ``meta_parameters`` are
    further meta-parameters (the inner optimiser's learned rates) that this objective, not
    the warp objective, is responsible for; it adds their gradients (times ``scale``) itself.
    """

    model: WarpedModel
    loss_fn: LossFn
    optimizer: InnerSGD
    task: Task
    theta0: Tensor
    adaptation: Adaptation
    generator: torch.Generator | None
    scale: float
    meta_parameters: tuple[Tensor, ...] = ()


class InitObjective(ABC):
    """How one task's adaptation contributes to the meta-gradient of θ_0.

    ``differentiable = True`` asks the engine to keep the graph of all K steps (MAML);
    ``adapts = False`` says the objective needs no adaptation at all (pretraining).
    ``observer()`` may return a fresh per-task observer that streams over the trajectory
    (Leap); it is handed back to :meth:`task_gradient`.
    """

    differentiable: bool = False
    adapts: bool = True

    def state_dict(self) -> dict:
        """State the objective keeps across meta-iterations (for checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state

    def observer(self) -> Observer | None:
        return None

    @abstractmethod
    def task_gradient(self, run: TaskRun, observer: Observer | None) -> Tensor:
        """This task's gradient for θ_0, flat ``[P]`` and detached (before averaging)."""
