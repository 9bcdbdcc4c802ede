"""Tasks: what the inner loop adapts to and the meta-objectives draw from."""

from warpgrad.tasks.base import Batch, Task, Transform, draw_batches
from warpgrad.tasks.sine import sine_task, sine_tasks

__all__ = ["Batch", "Task", "Transform", "draw_batches", "sine_task", "sine_tasks"]
