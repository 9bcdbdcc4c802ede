"""The task: one learning problem's data, and how the inner loop and meta-objectives draw from it.

Every algorithm in the package sees tasks only through this class, so a new kind of task
(few-shot episode, whole alphabet, sine curve, continual sequence) is a new constructor or a
small subclass, never a change to the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor]
"""``(x, y)``: inputs ``[B, ...]`` and targets ``[B, ...]`` on the task's device."""

Transform = Callable[[Tensor, torch.Generator], Tensor]
"""Batched augmentation: ``(x [B, ...], generator) -> x' [B, ...]`` (same shape)."""


@dataclass
class Task:
    """A task's data, already on its device.

    Args:
        x_train, y_train: adaptation data, ``[N_train, ...]`` and ``[N_train, ...]``.
        x_test, y_test: held-out data of the same task (the query set of a few-shot episode,
            the held-out drawings of a multi-shot alphabet), used for evaluation and, when
            ``meta_split == "test"``, by the meta-objectives.
        batch_size: examples per adaptation step, drawn with replacement from the training
            data (the Leap/WarpGrad multi-shot protocol); ``None`` uses the whole training set
            every step (few-shot and sine regression).
        meta_split: where meta-objectives (MAML's outer loss, WarpGrad's meta-loss) get their
            data: ``"test"`` (few-shot: the query set) or ``"train"`` (multi-shot: another
            batch of training data, keeping the held-out images for evaluation only).
        transform: optional batched augmentation applied to every training batch.
        key: a stable name for a task that recurs across meta-iterations (an alphabet of the
            multi-shot protocol); multi-headed fine-tuning keeps one head per key.

    A training draw takes its random numbers from the generator in a fixed order: the
    batch's row indices (:meth:`draw_index`), then the transform's.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    batch_size: int | None = None
    meta_split: Literal["train", "test"] = "test"
    transform: Transform | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train):
            raise ValueError(
                f"x_train has {len(self.x_train)} rows but y_train has {len(self.y_train)}"
            )
        if len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"x_test has {len(self.x_test)} rows but y_test has {len(self.y_test)}"
            )
        if len(self.x_train) == 0:
            raise ValueError("a task needs at least one training example")
        if self.meta_split not in ("train", "test"):
            raise ValueError(f"meta_split must be 'train' or 'test', got {self.meta_split!r}")

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def train_batch(self, generator: torch.Generator | None = None) -> Batch:
        """One adaptation batch (the whole training set when ``batch_size`` is ``None``)."""
        index = self.draw_index(generator)
        x, y = self.x_train, self.y_train
        if index is not None:
            index = index.to(x.device)
            x, y = x[index], y[index]
        if self.transform is not None:
            x = self.transform(x, generator)
        return x, y

    def meta_batch(self, generator: torch.Generator | None = None) -> Batch:
        """One batch for a meta-objective, from the split named by ``meta_split``."""
        if self.meta_split == "test":
            return self.x_test, self.y_test
        return self.train_batch(generator)

    def draw_index(self, generator: torch.Generator | None = None) -> Tensor | None:
        """The rows of one training batch, ``[batch_size]`` int64 on the host, drawn with
        replacement; ``None`` when every step uses the whole training set."""
        if self.batch_size is None:
            return None
        return torch.randint(len(self.x_train), (self.batch_size,), generator=generator)

    def warp_batches(self, step: int, generator: torch.Generator | None = None) -> tuple[
        Batch, list[Batch]
    ]:
        """Data for WarpGrad's meta-loss at trajectory point ``step``.

        Returns the batch for the one differentiable SGD step and the batches the loss after
        that step is averaged over. A continual-learning task overrides this to return the
        current and all previous sub-tasks.
        """
        return self.train_batch(generator), [self.meta_batch(generator)]

    def test_batch(self) -> Batch:
        """The whole held-out set, without augmentation."""
        return self.x_test, self.y_test
