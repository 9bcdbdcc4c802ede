"""The task: one learning problem's data, and how the inner loop and meta-objectives draw from it.

Every algorithm in the package sees tasks only through this class, so a new kind of task
(few-shot episode, whole alphabet, sine curve, continual sequence) is a new constructor or a
small subclass, never a change to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from warpgrad._transfer import to_device

Batch = tuple[Tensor, Tensor]
"""``(x, y)``: inputs ``[B, ...]`` and targets ``[B, ...]`` on the task's device."""

Transform = Callable[[Tensor, torch.Generator], Tensor]
"""Batched augmentation: ``(x [B, ...], generator) -> x' [B, ...]`` (same shape).

A transform that also offers ``sample(n, generator) -> params [n, ...]`` (its random draw,
on the host) and ``apply(x, params) -> x'`` (the computation, one row of ``params`` per
image), with ``t(x, g) == t.apply(x, t.sample(len(x), g))``, lets the engine draw the
batches of many steps at once (:func:`draw_batches`); :class:`~warpgrad.data.RandomAffine`
does."""

Split = Literal["train", "meta"]
"""Which draw: ``"train"`` (:meth:`Task.train_batch`) or ``"meta"`` (:meth:`Task.meta_batch`)."""


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
        prefetch_mb: memory (MB, 10^6 bytes) for batches drawn ahead of the steps that use
            them. Where nothing else draws from the generator meanwhile, the engine draws
            several steps' batches at once (:func:`draw_batches`: the same random numbers in
            the same order, so the same batches), one gather and one augmentation call for
            all of them instead of one per step: on a GPU each of those is host work the
            device waits for. ``0`` draws one batch at a time. Default (``None``): 32 on a
            GPU; 6 on the CPU, where a window that stays in cache is fastest (glyph batches
            of 128: 0.9-1.1 ms per draw 16 at a time, 1.2-1.6 one at a time, 1.8-1.9 100
            at a time).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    batch_size: int | None = None
    meta_split: Literal["train", "test"] = "test"
    transform: Transform | None = None
    key: str | None = None
    prefetch_mb: float | None = None

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
        if self.prefetch_mb is not None and not self.prefetch_mb >= 0:
            raise ValueError(f"prefetch_mb must be None or at least 0, got {self.prefetch_mb}")

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def train_batch(self, generator: torch.Generator | None = None) -> Batch:
        """One adaptation batch (the whole training set when ``batch_size`` is ``None``)."""
        return _built(self._plan("train", generator))

    def meta_batch(self, generator: torch.Generator | None = None) -> Batch:
        """One batch for a meta-objective, from the split named by ``meta_split``."""
        return _built(self._plan("meta", generator))

    def prefetch_window(self) -> int:
        """How many training batches fit in ``prefetch_mb`` (at least 1)."""
        rows = self.batch_size or len(self.x_train)
        batch_bytes = rows * self.x_train[0].numel() * self.x_train.element_size()
        budget = self.prefetch_mb
        if budget is None:
            budget = 6.0 if self.device.type == "cpu" else 32.0
        return max(1, int(budget * 1e6 // max(batch_bytes, 1)))

    def _plan(self, split: Split, generator: torch.Generator | None) -> Batch | _Planned:
        """This class's draw: its random numbers, in the order the draw takes them, with the
        gather and the augmentation left for :meth:`_realize`; the batch itself where there
        is nothing to defer (a fixed split, or a transform that draws as it computes)."""
        if split == "meta" and self.meta_split == "test":
            return self.x_test, self.y_test
        if self.batch_size is None and self.transform is None:
            return self.x_train, self.y_train
        splits = self.transform is None or (hasattr(self.transform, "sample")
                                            and hasattr(self.transform, "apply"))
        index = self._draw_index(generator)
        if not splits:
            x, y = self._gather(None if index is None else [index], 1)
            return self.transform(x, generator), y
        rows = len(self.x_train) if index is None else len(index)
        params = None if self.transform is None else self.transform.sample(rows, generator)
        return _Planned(self, index, params)

    def _draw_index(self, generator: torch.Generator | None) -> Tensor | None:
        if self.batch_size is None:
            return None
        return torch.randint(len(self.x_train), (self.batch_size,), generator=generator)

    def _gather(self, indices: list[Tensor] | None, n: int) -> Batch:
        """The training rows of ``n`` draws, concatenated: ``indices`` (one ``[B]`` per draw,
        on the host), or ``n`` copies of the whole training set."""
        x, y = self.x_train, self.y_train
        if indices is None:
            return x.repeat(n, *([1] * (x.dim() - 1))), y.repeat(n, *([1] * (y.dim() - 1)))
        index = to_device(torch.cat(indices), x.device)
        return x[index], y[index]

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


@dataclass
class _Planned:
    """A draw whose random numbers are taken: ``index`` ``[B]`` (``None``: the whole training
    set) and the transform's ``params``; the batch is built by :func:`_realize`."""

    task: Task
    index: Tensor | None
    params: Tensor | None


def draw_batches(requests: Sequence[tuple[Task, Split]],
                 generator: torch.Generator | None = None) -> list[Batch]:
    """The batches that calling ``task.train_batch(generator)`` (``"train"``) or
    ``task.meta_batch(generator)`` (``"meta"``) in this order would return, the same values:
    the random numbers are drawn request by request in the same order, then each task
    gathers all its rows in one call and each transform (tasks built by one loader share
    theirs) augments all its images in one call. Those calls are the host work a step's draw
    costs (60-odd operators at the multi-shot protocol's shapes), so drawing many steps'
    batches at once makes it nearly free per step.
    """
    slots = [_plan(task, split, generator) for task, split in requests]
    positions = [i for i, slot in enumerate(slots) if isinstance(slot, _Planned)]
    for i, batch in zip(positions, _realize([slots[i] for i in positions])):
        slots[i] = batch
    return slots


def _realize(planned: list[_Planned]) -> list[Batch]:
    """The batches of planned draws: one gather per task, then one augmentation call per
    transform and image shape."""
    batches: list[Batch] = [None] * len(planned)  # type: ignore[list-item]
    for members in _groups([id(p.task) for p in planned]):
        task = planned[members[0]].task
        full = planned[members[0]].index is None
        x, y = task._gather(None if full else [planned[i].index for i in members], len(members))
        rows = len(x) // len(members)
        for i, xb, yb in zip(members, x.split(rows), y.split(rows)):
            batches[i] = xb, yb
    augmented = [i for i, p in enumerate(planned) if p.task.transform is not None]
    keys = [(id(planned[i].task.transform), batches[i][0].shape[1:], batches[i][0].dtype,
             batches[i][0].device) for i in augmented]
    for group in _groups(keys):
        members = [augmented[j] for j in group]
        transform = planned[members[0]].task.transform
        images = [batches[i][0] for i in members]
        x = images[0] if len(images) == 1 else torch.cat(images)
        x = transform.apply(x, torch.cat([planned[i].params for i in members]))
        for i, xb in zip(members, x.split([len(image) for image in images])):
            batches[i] = xb, batches[i][1]
    return batches


def _plan(task: Task, split: Split, generator: torch.Generator | None) -> Batch | _Planned:
    """``task._plan``, or the batch itself from a subclass that draws its own way."""
    if split == "train" and type(task).train_batch is not Task.train_batch:
        return task.train_batch(generator)
    if split == "meta" and type(task).meta_batch is not Task.meta_batch:
        return task.meta_batch(generator)
    return task._plan(split, generator)


def _groups(keys: Sequence[Hashable]) -> list[list[int]]:
    """Positions of equal keys, grouped, in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _built(slot: Batch | _Planned) -> Batch:
    return _realize([slot])[0] if isinstance(slot, _Planned) else slot
