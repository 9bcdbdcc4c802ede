"""warpgrad: meta-learning with Warped Gradient Descent (Flennerhag et al., ICLR 2020).

The public API::

    WarpedModel, WarpLayer, conv4, mlp, warped_lstm       # learners with a θ/φ split
    MetaLearner, make_learner, METHODS                    # meta-training
    WarpGrad, Leap, Reptile, MAML                         # the objectives
    Task, sine_task                                       # tasks
    adapt, InnerSGD, ReplayBuffer                         # the inner-loop engine
    warpgrad.accel.convert                                # the opt-in accelerator
"""

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
from warpgrad.models import WarpedModel, WarpLayer, conv4, mlp, warp_stack, warped_lstm
from warpgrad.tasks import Task, sine_task, sine_tasks

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
    "conv4",
    "make_learner",
    "mlp",
    "sine_task",
    "sine_tasks",
    "warp_stack",
    "warped_lstm",
]
