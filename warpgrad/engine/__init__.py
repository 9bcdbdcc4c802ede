"""The inner-loop engine shared by every algorithm: functional SGD on a flat θ, the adaptation
loop with its observers, the replay buffer of trajectory points, and the reference backend
that runs the hot operations."""

from warpgrad.engine.adapt import Adaptation, Observer, StepRecord, adapt
from warpgrad.engine.backend import REFERENCE, Backend, Step
from warpgrad.engine.buffer import Points, ReplayBuffer
from warpgrad.engine.inner_sgd import InnerSGD

__all__ = ["REFERENCE", "Adaptation", "Backend", "InnerSGD", "Observer", "Points",
           "ReplayBuffer", "Step", "StepRecord", "adapt"]
