"""warpgrad: meta-learning with Warped Gradient Descent (Flennerhag et al., ICLR 2020).

The public API::

    WarpedModel, WarpLayer, conv4, mlp                    # learners with a θ/φ split
    warped_lstm, adaptive_lstm                            # recurrent learners (maze RL)
    MetaLearner, make_learner, METHODS                    # meta-training
    WarpGrad, Leap, Reptile, MAML                         # the objectives
    Task, sine_task                                       # tasks
    adapt, InnerSGD, ReplayBuffer                         # the inner-loop engine
    warpgrad.accel.convert                                # the opt-in accelerator
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warpgrad.algorithms import (
        MAML,
        METHODS,
        Leap,
        MetaLearner,
        Reptile,
        WarpGrad,
        make_learner,
    )
    from warpgrad.engine import InnerSGD, ReplayBuffer, adapt
    from warpgrad.models import (
        WarpedModel,
        WarpLayer,
        adaptive_lstm,
        conv4,
        mlp,
        warp_stack,
        warped_lstm,
    )
    from warpgrad.tasks import Task, sine_task, sine_tasks

# Imported on first use, so that the `warpgrad` command starts without importing torch.
_HOMES = {
    "warpgrad.algorithms": ("MAML", "METHODS", "Leap", "MetaLearner", "Reptile", "WarpGrad",
                            "make_learner"),
    "warpgrad.engine": ("InnerSGD", "ReplayBuffer", "adapt"),
    "warpgrad.models": ("WarpedModel", "WarpLayer", "adaptive_lstm", "conv4", "mlp",
                        "warp_stack", "warped_lstm"),
    "warpgrad.tasks": ("Task", "sine_task", "sine_tasks"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _HOME_OF:
        return getattr(import_module(_HOME_OF[name]), name)
    raise AttributeError(f"module 'warpgrad' has no attribute {name!r}")


__version__ = "0.2.0"

__all__ = [
    "MAML",
    "METHODS",
    "InnerSGD",
    "Leap",
    "MetaLearner",
    "ReplayBuffer",
    "Reptile",
    "Task",
    "WarpGrad",
    "WarpLayer",
    "WarpedModel",
    "adapt",
    "adaptive_lstm",
    "conv4",
    "make_learner",
    "mlp",
    "sine_task",
    "sine_tasks",
    "warp_stack",
    "warped_lstm",
]
