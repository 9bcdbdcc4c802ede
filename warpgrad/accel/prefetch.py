"""Batch draws made a window at a time: the same batches as drawing one at a time.

A task's training draw (:meth:`warpgrad.tasks.Task.train_batch`) is a handful of host
operations (an index draw, a gather, an augmentation's parameters and its call). Drawn one
at a time they are host work on every adaptation step and buffer point, which a GPU waits
for. :func:`lookahead` draws the random numbers of a window of requests in their order, then
gathers each task's rows in one call and augments each transform's images in one call.

Exactness holds by construction, whatever else draws from the generator: after handing out
a batch, the generator is put in the state it would have after drawing only up to that
batch; when the next batch is asked for and the generator is no longer in that state
(something else drew in between, as WarpGrad's online objective does), the rest of the
window is thrown away and drawn again from where the generator now is, one request at a
time from then on.

It needs the draw's two halves from a task's transform: ``sample(n, generator) -> params``
(its random numbers, on the host) and ``apply(x, params) -> x'``, with
``t(x, g) == t.apply(x, t.sample(len(x), g))`` (:class:`warpgrad.data.RandomAffine` has
them). Tasks whose draws are their own (a subclass overriding ``train_batch`` or
``meta_batch``) or whose transform lacks them are drawn one at a time, as they are.
"""

from __future__ import annotations

import ctypes
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from warpgrad.accel.transfer import to_device
from warpgrad.tasks.base import Batch, Task

Split = Literal["train", "meta"]
"""Which draw: ``"train"`` (:meth:`Task.train_batch`) or ``"meta"`` (:meth:`Task.meta_batch`)."""


@dataclass
class _Planned:
    """A draw whose random numbers are taken: ``index`` ``[B]`` (``None``: the whole training
    set) and the transform's ``params``; the batch is built by :func:`_realize`."""

    task: Task
    index: Tensor | None
    params: Tensor | None


def plannable(task: Task) -> bool:
    """Whether ``task``'s draws can be planned ahead (see the module docstring)."""
    if type(task).train_batch is not Task.train_batch:
        return False
    if type(task).meta_batch is not Task.meta_batch:
        return False
    t = task.transform
    return t is None or (hasattr(t, "sample") and hasattr(t, "apply"))


def window_of(task: Task, budget_mb: float) -> int:
    """How many of ``task``'s training batches fit in ``budget_mb`` (MB, at least 1)."""
    rows = task.batch_size or len(task.x_train)
    batch_bytes = rows * task.x_train[0].numel() * task.x_train.element_size()
    return max(1, int(budget_mb * 1e6 // max(batch_bytes, 1)))


def lookahead(requests: Sequence[tuple[Task, Split]], generator: torch.Generator,
              window: int) -> Iterator[Batch]:
    """The batches of ``requests`` (each ``task.train_batch(generator)`` or
    ``task.meta_batch(generator)``, in order), drawn ``window`` requests at a time, exactly
    (see the module docstring). Every task must be :func:`plannable`."""
    start = 0
    while start < len(requests):
        group = requests[start:start + window]
        slots, states = [], []
        for task, split in group:
            slots.append(_plan(task, split, generator))
            states.append(generator.get_state())
        for batch, state in zip(draw_planned(slots), states):
            generator.set_state(state)
            yield batch
            start += 1
            if _bytes(generator.get_state()) != _bytes(state):
                window = 1  # drawn from in between: the rest of the window is stale
                break


def draw_planned(slots: list[Batch | _Planned]) -> list[Batch]:
    """The batches of planned draws: one gather per task, then one augmentation call per
    transform and image shape."""
    positions = [i for i, slot in enumerate(slots) if isinstance(slot, _Planned)]
    out = list(slots)
    for i, batch in zip(positions, _realize([slots[i] for i in positions])):
        out[i] = batch
    return out


def _plan(task: Task, split: Split, generator: torch.Generator) -> Batch | _Planned:
    """The draw's random numbers, in the order :meth:`Task.train_batch` takes them, with the
    gather and the augmentation left for :func:`_realize`; the batch itself where there is
    nothing to draw (a fixed split, or the whole training set without a transform)."""
    if split == "meta" and task.meta_split == "test":
        return task.x_test, task.y_test
    if task.batch_size is None and task.transform is None:
        return task.x_train, task.y_train
    index = task.draw_index(generator)
    rows = len(task.x_train) if index is None else len(index)
    params = None if task.transform is None else task.transform.sample(rows, generator)
    return _Planned(task, index, params)


def _realize(planned: list[_Planned]) -> list[Batch]:
    batches: list[Batch] = [None] * len(planned)  # type: ignore[list-item]
    for members in _groups([id(p.task) for p in planned]):
        task = planned[members[0]].task
        full = planned[members[0]].index is None
        x, y = _gather(task, None if full else [planned[i].index for i in members],
                       len(members))
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


def _gather(task: Task, indices: list[Tensor] | None, n: int) -> Batch:
    """The training rows of ``n`` draws, concatenated: ``indices`` (one ``[B]`` per draw,
    on the host), or ``n`` copies of the whole training set."""
    x, y = task.x_train, task.y_train
    if indices is None:
        return x.repeat(n, *([1] * (x.dim() - 1))), y.repeat(n, *([1] * (y.dim() - 1)))
    index = to_device(torch.cat(indices), x.device)
    return x[index], y[index]


def _bytes(state: Tensor) -> bytes:
    """A generator state's bytes, read without an operator (a comparison of tensors, or
    ``.numpy()``, would be host work on every batch)."""
    return ctypes.string_at(state.data_ptr(), state.nbytes)


def _groups(keys: Sequence[Hashable]) -> list[list[int]]:
    """Positions of equal keys, grouped, in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())
