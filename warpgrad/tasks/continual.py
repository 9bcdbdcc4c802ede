"""Continual sine regression: one sine curve learned as a sequence of sub-tasks.

The input range of a curve y = A sin(x − b) is cut into S consecutive, equally wide
sub-intervals. Adaptation visits them in order, K steps of SGD on each, never revisiting an
earlier one; the learner should fit the current piece without destroying the earlier ones.
WarpGrad's meta-loss at a trajectory point during sub-task j is the average loss over
sub-tasks 0..j (:meth:`ContinualTask.warp_batches`), so φ is meta-learned to make updates
that do not overwrite what came before.

How the engine's one inner loop sees the sequence. :func:`~warpgrad.engine.adapt.adapt` asks
the task for one training batch per step (``task.train_batch``), in order, plus at most one
more batch for the loss at θ_K when an observer asks for it (Leap). A
:class:`ContinualTask` counts these calls: call k (0-based) returns sub-task
``min(k // K, S − 1)``. So one ``S·K``-step adaptation walks the sequence exactly once; the
count is rewound by :meth:`ContinualTask.rewind` before the task is adapted again (a second
pass without a rewind raises instead of silently training on the last sub-task).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from warpgrad.tasks.base import Batch, Task
from warpgrad.tasks.sine import uniform


class ContinualTask(Task):
    """A sequence of S regression sub-tasks adapted one after another, K steps each.

    Args:
        train: ``(x [S, N, D], y [S, N, O])``: each sub-task's adaptation data (full batch
            every step).
        meta: ``(x [S, M, D], y [S, M, O])``: other points of each sub-task, for WarpGrad's
            meta-loss (never used for adaptation).
        test: ``(x [S, T, D], y [S, T, O])``: held-out points of each sub-task, for the
            forgetting matrix; together they are the task's whole-range test set.
        steps_per_subtask: K, SGD steps on each sub-task; one pass over the sequence is
            ``S·K`` adaptation steps (:attr:`total_steps`).
        target: optionally the noiseless function the data sample, ``x [N, D] -> y [N, O]``
            (the true curve, for plots).
        key: optional stable name.

    ``x_train``/``y_train`` (the base class's view) are all sub-tasks' adaptation points
    concatenated, ``x_test``/``y_test`` all held-out points (the whole input range).
    """

    def __init__(self, train: tuple[Tensor, Tensor], meta: tuple[Tensor, Tensor],
                 test: tuple[Tensor, Tensor], steps_per_subtask: int, *,
                 target: Callable[[Tensor], Tensor] | None = None,
                 key: str | None = None) -> None:
        splits = {"train": train, "meta": meta, "test": test}
        subtasks = len(train[0])
        for name, (x, y) in splits.items():
            if x.dim() < 3 or y.dim() < 3:
                raise ValueError(f"{name} data must be [S, N, ...] per sub-task, got x "
                                 f"{list(x.shape)} and y {list(y.shape)}")
            if len(x) != subtasks or len(y) != subtasks:
                raise ValueError(f"every split needs the same number of sub-tasks; train has "
                                 f"{subtasks}, {name} has x {len(x)}, y {len(y)}")
            if x.shape[1] != y.shape[1] or x.shape[1] == 0:
                raise ValueError(f"{name} needs as many x as y points per sub-task, and at "
                                 f"least one; got {x.shape[1]} and {y.shape[1]}")
        if subtasks < 1:
            raise ValueError("a continual task needs at least one sub-task")
        if steps_per_subtask < 1:
            raise ValueError(f"steps_per_subtask must be at least 1, got {steps_per_subtask}")
        super().__init__(train[0].flatten(0, 1), train[1].flatten(0, 1),
                         test[0].flatten(0, 1), test[1].flatten(0, 1), batch_size=None,
                         meta_split="train", key=key)
        self.sub_train, self.sub_meta, self.sub_test = train, meta, test
        self.subtasks = subtasks
        self.steps_per_subtask = steps_per_subtask
        self.target = target
        self._calls = 0

    @property
    def total_steps(self) -> int:
        """Adaptation steps of one pass over the sequence, ``S·K``."""
        return self.subtasks * self.steps_per_subtask

    def subtask_at(self, step: int) -> int:
        """Index of the sub-task adapted at adaptation step ``step`` (θ_K's, the end of the
        last sub-task, for ``step == S·K``)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        return min(step // self.steps_per_subtask, self.subtasks - 1)

    def rewind(self) -> None:
        """Start the sequence again at sub-task 0 (before adapting this task once more)."""
        self._calls = 0

    def train_batch(self, generator: torch.Generator | None = None) -> Batch:
        """The current sub-task's adaptation data; advances the sequence by one step."""
        del generator  # full batch: nothing to draw
        # S·K steps plus one extra call for the loss at θ_K (Leap's last segment)
        if self._calls > self.total_steps:
            raise RuntimeError(
                f"this continual task was already adapted through all {self.subtasks} "
                "sub-tasks; call rewind() before adapting it again")
        j = self.subtask_at(self._calls)
        self._calls += 1
        return self.sub_train[0][j], self.sub_train[1][j]

    def meta_batch(self, generator: torch.Generator | None = None) -> Batch:
        """All sub-tasks' meta points (what a meta-objective that ignores the sequence sees)."""
        del generator
        return self.sub_meta[0].flatten(0, 1), self.sub_meta[1].flatten(0, 1)

    def warp_batches(self, step: int, generator: torch.Generator | None = None
                     ) -> tuple[Batch, list[Batch]]:
        """WarpGrad's data at trajectory point ``step`` during sub-task j: the step is taken
        on sub-task j's adaptation data, the loss after it averaged over the meta points of
        sub-tasks 0..j (the current one and every earlier one)."""
        del generator
        j = self.subtask_at(step)
        inner = (self.sub_train[0][j], self.sub_train[1][j])
        return inner, [(self.sub_meta[0][i], self.sub_meta[1][i]) for i in range(j + 1)]

    def subtask_test(self, j: int) -> Batch:
        """Held-out points of sub-task ``j``: ``x [T, D]``, ``y [T, O]``."""
        return self.sub_test[0][j], self.sub_test[1][j]


def continual_sine_task(
    generator: torch.Generator,
    *,
    subtasks: int = 5,
    points_per_subtask: int = 10,
    meta_points_per_subtask: int = 10,
    test_points_per_subtask: int = 50,
    steps_per_subtask: int = 5,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
    device: torch.device | str | None = None,
) -> ContinualTask:
    """One curve y = A sin(x − b), A ~ U[amplitude], b ~ U[phase], as ``subtasks``
    consecutive sub-intervals of ``x_range`` (equal widths), left to right.

    Each sub-task draws ``points_per_subtask`` adaptation points, ``meta_points_per_subtask``
    meta points and ``test_points_per_subtask`` held-out points uniformly in its interval;
    inputs and targets are ``[.., 1]`` floats.
    """
    counts = {"subtasks": subtasks, "points_per_subtask": points_per_subtask,
              "meta_points_per_subtask": meta_points_per_subtask,
              "test_points_per_subtask": test_points_per_subtask}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
        if not low <= high:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
    if x_range[0] == x_range[1]:
        raise ValueError(f"x_range must have positive width, got {x_range}")
    a = uniform(generator, *amplitude, 1)
    b = uniform(generator, *phase, 1)
    width = (x_range[1] - x_range[0]) / subtasks
    starts = x_range[0] + width * torch.arange(subtasks, dtype=torch.float32)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        x = starts[:, None] + width * torch.rand(subtasks, n, generator=generator)
        x = x.unsqueeze(-1)
        return x.to(device), (a * torch.sin(x - b)).to(device)

    def curve(x: Tensor) -> Tensor:
        return a.to(x.device) * torch.sin(x - b.to(x.device))

    return ContinualTask(draw(points_per_subtask), draw(meta_points_per_subtask),
                         draw(test_points_per_subtask), steps_per_subtask, target=curve)


def continual_sine_tasks(n: int, generator: torch.Generator, **kwargs) -> list[ContinualTask]:
    """``n`` independent :func:`continual_sine_task` s."""
    return [continual_sine_task(generator, **kwargs) for _ in range(n)]
