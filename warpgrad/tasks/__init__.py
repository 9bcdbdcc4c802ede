"""Tasks: what the inner loop adapts to and the meta-objectives draw from."""

from warpgrad.tasks.base import Batch, Task, Transform
from warpgrad.tasks.sine import sine_task, sine_tasks

__all__ = ["Batch", "Task", "Transform", "sine_task", "sine_tasks"]
