"""Batches drawn ahead (warpgrad.accel.prefetch, through ``AcceleratedBackend.train_batches``
and ``warp_batches``): the same batches, from the same random numbers in the same order, as
the reference backend's draws one at a time, also when something else draws from the same
generator in between."""

from __future__ import annotations

import copy
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from warpgrad import MetaLearner, accel, conv4
from warpgrad.accel import AcceleratedBackend, prefetch
from warpgrad.algorithms import Leap, WarpGrad
from warpgrad.data import RandomAffine
from warpgrad.engine.adapt import adapt
from warpgrad.engine.backend import Backend
from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.tasks import Task


def _gens(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def _task(seed: int, *, batch_size: int | None = 8, transform=None, meta_split="train",
          rows: int = 30, size: int = 12) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 1, size, size, generator=g)
    y = torch.randint(3, (rows,), generator=g)
    return Task(x, y, x[:5] + 1, y[:5], batch_size=batch_size, meta_split=meta_split,
                transform=RandomAffine() if transform is None else transform)


def _reference_draw(task: Task, generator: torch.Generator):
    """A training draw as written before draws could be planned: an index, a gather, then
    the augmentation, all from the same generator."""
    index = torch.randint(len(task.x_train), (task.batch_size,), generator=generator)
    return task.transform(task.x_train[index], generator), task.y_train[index]


def _same(a, b) -> bool:
    return all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


def _same_warp_batches(a, b) -> bool:
    (inner_a, metas_a), (inner_b, metas_b) = a, b
    return _same(inner_a, inner_b) and len(metas_a) == len(metas_b) and all(
        _same(m, n) for m, n in zip(metas_a, metas_b))


class _Counting(Task):
    """A subclass that makes its own training batches (as continual tasks do)."""

    def train_batch(self, generator=None):
        self.calls = getattr(self, "calls", 0) + 1
        return self.x_train[:4] * self.calls, self.y_train[:4]


def _counting(seed: int) -> _Counting:
    return _Counting(**{f.name: getattr(_task(seed), f.name) for f in fields(Task)})


def _spy_windows(monkeypatch) -> list[int]:
    """Records how many draws each gather-and-augment call served."""
    sizes: list[int] = []
    realize = prefetch._realize

    def spy(planned):
        sizes.append(len(planned))
        return realize(planned)

    monkeypatch.setattr(prefetch, "_realize", spy)
    return sizes


def test_a_training_draw_is_an_index_then_the_augmentation():
    task = _task(0)
    ours, reference = _gens(3)
    for _ in range(3):
        assert _same(task.train_batch(ours), _reference_draw(task, reference))
    assert torch.equal(ours.get_state(), reference.get_state())


def _plannable_tasks() -> list[Task]:
    shared = RandomAffine()  # as a loader's tasks share theirs: augmented in one call
    return [
        _task(0, transform=shared),
        _task(1, meta_split="test", transform=shared),  # its meta batch is the test set
        _task(2, batch_size=None, transform=shared),  # the whole training set, augmented
        Task(*_task(3).test_batch(), *_task(3).test_batch(), batch_size=3),  # no transform
    ]


@pytest.mark.parametrize("window", [1, 3, 50])
def test_lookahead_gives_the_batches_of_draws_one_at_a_time(monkeypatch, window):
    windows = _spy_windows(monkeypatch)
    a, b, full, bare = _plannable_tasks()
    assert all(prefetch.plannable(t) for t in (a, b, full, bare))
    requests = [(a, "train"), (b, "train"), (a, "meta"), (b, "meta"), (full, "train"),
                (bare, "train"), (a, "train"), (bare, "meta"), (full, "meta"), (b, "train")]
    ahead, one_by_one = _gens(11)
    drawn = list(prefetch.lookahead(requests, ahead, window))
    assert len(drawn) == len(requests)
    for (task, split), batch in zip(requests, drawn, strict=True):
        expected = (task.train_batch(one_by_one) if split == "train"
                    else task.meta_batch(one_by_one))
        assert _same(batch, expected), (split, task.batch_size)
    assert torch.equal(ahead.get_state(), one_by_one.get_state())
    # b's and bare's test splits are not drawn: the batch is the split itself
    planned = sum(not (split == "meta" and task.meta_split == "test") for task, split in requests)
    assert max(windows) == min(window, planned)


def test_tasks_that_cannot_be_planned_are_drawn_one_at_a_time(monkeypatch):
    """A subclass with its own draws, or a transform without ``sample``/``apply``: the
    accelerated backend leaves their draws to them."""
    windows = _spy_windows(monkeypatch)
    lambda_transform = _task(3, transform=lambda x, g: x + torch.rand(x.shape, generator=g))
    own, own_again = _counting(4), _counting(4)
    assert not prefetch.plannable(lambda_transform) and not prefetch.plannable(own)
    fast, reference = AcceleratedBackend(), Backend()
    for task, twin in ((lambda_transform, lambda_transform), (own, own_again)):
        ahead, one_by_one = _gens(5)
        ours = list(fast.train_batches(task, 4, ahead))
        theirs = list(reference.train_batches(twin, 4, one_by_one))
        assert len(ours) == 4 and all(_same(s, t) for s, t in zip(ours, theirs, strict=True))
        assert torch.equal(ahead.get_state(), one_by_one.get_state())
    assert own.calls == own_again.calls == 4
    a = _task(0)
    ahead, one_by_one = _gens(6)
    points = [(0, 0), (1, 0), (0, 1), (1, 1)]
    ours = list(fast.warp_batches([a, own], points, ahead))
    theirs = list(reference.warp_batches([a, own_again], points, one_by_one))
    assert all(_same_warp_batches(s, t) for s, t in zip(ours, theirs, strict=True))
    assert torch.equal(ahead.get_state(), one_by_one.get_state())
    assert not windows


def test_the_backends_batches_and_generator_state_are_the_references(monkeypatch):
    windows = _spy_windows(monkeypatch)
    tasks = _plannable_tasks()
    fast, reference = AcceleratedBackend(), Backend()
    for task in tasks:
        ahead, one_by_one = _gens(7)
        ours = list(fast.train_batches(task, 5, ahead))
        theirs = list(reference.train_batches(task, 5, one_by_one))
        assert len(ours) == 5 and all(_same(s, t) for s, t in zip(ours, theirs, strict=True))
        assert torch.equal(ahead.get_state(), one_by_one.get_state())
    points = [(i % len(tasks), i // 2) for i in range(9)]
    ahead, one_by_one = _gens(8)
    ours = list(fast.warp_batches(tasks, points, ahead))
    theirs = list(reference.warp_batches(tasks, points, one_by_one))
    assert len(ours) == len(points)
    assert all(_same_warp_batches(s, t) for s, t in zip(ours, theirs, strict=True))
    assert torch.equal(ahead.get_state(), one_by_one.get_state())
    assert max(windows) > 2  # it did draw ahead


def test_draws_in_between_see_the_reference_stream(monkeypatch):
    """Something that draws from the generator between two of the backend's batches (an
    observer, WarpGrad's online objective) gets what it would get from the reference
    backend, and so do the batches after it: the lookahead puts the generator where the
    reference would have it after each batch, and draws again when it has moved."""
    windows = _spy_windows(monkeypatch)
    task = _task(0)
    other = _task(9, batch_size=5)

    def stream(backend, generator, warp: bool) -> list[torch.Tensor]:
        if warp:
            drawn = backend.warp_batches([task, other], [(0, k % 3) for k in range(6)],
                                         generator)
            batches = (inner for inner, _ in drawn)
        else:
            batches = backend.train_batches(task, 6, generator)
        seen = []
        for k, (x, _) in enumerate(batches):
            seen.append(x)
            if k in (1, 2, 4):  # draws in between, of another task and plain random numbers
                seen.append(other.train_batch(generator)[0])
                seen.append(torch.rand(3, generator=generator))
        seen.append(generator.get_state())
        return seen

    for warp in (False, True):
        windows.clear()
        ahead, one_by_one = _gens(12)
        ours = stream(AcceleratedBackend(), ahead, warp)
        theirs = stream(Backend(), one_by_one, warp)
        assert len(ours) == len(theirs) == 6 + 3 * 2 + 1
        assert all(torch.equal(s, t) for s, t in zip(ours, theirs, strict=True))
        assert max(windows) > 2  # it drew ahead, then again after the draws in between


class _Draws:
    """An observer that draws a training batch from the adaptation's own generator at
    every point (no flag tells the engine so)."""

    needs_final_loss = False

    def __init__(self, task: Task, generator: torch.Generator) -> None:
        self.task, self.generator, self.seen = task, generator, []

    def observe(self, record) -> None:
        self.seen.append(self.task.train_batch(self.generator)[0])


def test_an_observer_that_draws_sees_the_stream_of_draws_one_at_a_time(monkeypatch):
    windows = _spy_windows(monkeypatch)
    torch.manual_seed(0)
    reference = conv4(3, filters=4, warp=None)

    def run(prefetch_mb):
        model = accel.convert(copy.deepcopy(reference), prefetch_mb=prefetch_mb)
        task = _task(0, size=28)
        generator = torch.Generator().manual_seed(2)
        observer = _Draws(task, generator)
        result = adapt(model, model.init_theta(), task, F.cross_entropy,
                       InnerSGD(model.task_spec, 0.1), 5, observers=[observer],
                       generator=generator)
        return result.losses, torch.stack(observer.seen), generator.get_state()

    one_at_a_time = run(0)
    assert not windows
    drawn_ahead = run(None)
    assert max(windows) == 5  # the whole adaptation planned at once, then redrawn
    assert all(torch.equal(a, b) for a, b in zip(drawn_ahead, one_at_a_time, strict=True))


def test_prefetch_window_follows_the_memory_budget():
    task = _task(0, batch_size=10, size=10)  # 10 x 100 floats = 4 kB a batch
    assert prefetch.window_of(task, 0.004) == 1
    assert prefetch.window_of(task, 0.04) == 10
    assert prefetch.window_of(task, 0.0001) == 1  # at least one
    assert AcceleratedBackend(prefetch_mb=0.04)._window(task) == 10
    assert AcceleratedBackend(prefetch_mb=0)._window(task) == 0  # off
    assert AcceleratedBackend()._window(_task(0, batch_size=128, size=28)) == 14  # 6 MB (CPU)
    with pytest.raises(ValueError, match="prefetch_mb"):
        AcceleratedBackend(prefetch_mb=-1)
    with pytest.raises(ValueError, match="prefetch_mb"):
        accel.convert(conv4(3, filters=4), prefetch_mb=-1)


def _meta_steps(prefetch_mb: float | None, warp: WarpGrad | None
                ) -> tuple[torch.Tensor, list[dict]]:
    torch.manual_seed(0)
    model = accel.convert(conv4(3, filters=4, warp="conv3x3" if warp is not None else None),
                          prefetch_mb=prefetch_mb)
    tasks = [_task(i, size=28, meta_split="train") for i in range(2)]
    learner = MetaLearner(model, F.cross_entropy, steps=6, warp=warp, init=Leap(), seed=5)
    losses = [learner.meta_step(tasks) for _ in range(2)]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return flat, losses


@pytest.mark.parametrize("warp", [
    WarpGrad("first-order"),
    WarpGrad("exact", points_per_update=3, batched=True),
    # its observer draws between the adaptation's steps: the lookahead redraws after it
    WarpGrad("exact", "online"),
    WarpGrad("first-order", "online", share_step=True),
    None,
], ids=["first-order", "exact-batched", "online", "online-shared", "leap"])
def test_meta_steps_with_batches_drawn_ahead_equal_one_at_a_time(monkeypatch, warp):
    windows = _spy_windows(monkeypatch)
    ahead, ahead_stats = _meta_steps(None, warp)
    assert max(windows) > 2
    windows.clear()
    one, one_stats = _meta_steps(0, warp)
    # prefetch_mb=0: one batch at a time, but a point's two batches still come together
    assert max(windows, default=0) <= 2
    assert torch.equal(ahead, one)
    assert ahead_stats == one_stats
