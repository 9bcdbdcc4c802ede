"""The inner-loop engine shared by every algorithm: functional SGD on a flat θ, the adaptation
loop with its observers, and the replay buffer of trajectory points."""

from warpgrad.engine.adapt import Adaptation, Observer, StepRecord, adapt, adapt_tasks
from warpgrad.engine.buffer import Points, ReplayBuffer
from warpgrad.engine.inner_sgd import InnerSGD

__all__ = ["Adaptation", "InnerSGD", "Observer", "Points", "ReplayBuffer", "StepRecord", "adapt",
           "adapt_tasks"]
