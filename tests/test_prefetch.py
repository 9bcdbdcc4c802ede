"""Batches drawn ahead (``Task.prefetch_mb``, ``draw_batches``): the same batches, from the
same random numbers in the same order, as drawing them one step at a time."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from warpgrad import MetaLearner, conv4
from warpgrad.algorithms import Leap, WarpGrad
from warpgrad.data import RandomAffine
from warpgrad.engine.adapt import adapt
from warpgrad.engine.inner_sgd import InnerSGD
from warpgrad.tasks import Task, base, draw_batches


def _gens(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def _task(seed: int, *, batch_size: int | None = 8, transform=None, meta_split="train",
          rows: int = 30, size: int = 12, prefetch_mb: float | None = None) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 1, size, size, generator=g)
    y = torch.randint(3, (rows,), generator=g)
    return Task(x, y, x[:5] + 1, y[:5], batch_size=batch_size, meta_split=meta_split,
                transform=RandomAffine() if transform is None else transform,
                prefetch_mb=prefetch_mb)


def _reference_draw(task: Task, generator: torch.Generator):
    """A training draw as written before draws could be planned: an index, a gather, then
    the augmentation, all from the same generator."""
    index = torch.randint(len(task.x_train), (task.batch_size,), generator=generator)
    return task.transform(task.x_train[index], generator), task.y_train[index]


def _same(a, b) -> bool:
    return all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


class _Counting(Task):
    """A subclass that makes its own training batches (as continual tasks do)."""

    def train_batch(self, generator=None):
        self.calls = getattr(self, "calls", 0) + 1
        return self.x_train[:4] * self.calls, self.y_train[:4]


def test_a_training_draw_is_an_index_then_the_augmentation():
    task = _task(0)
    ours, reference = _gens(3)
    for _ in range(3):
        assert _same(task.train_batch(ours), _reference_draw(task, reference))
    assert torch.equal(ours.get_state(), reference.get_state())


def test_draw_batches_gives_the_batches_of_draws_one_at_a_time():
    shared = RandomAffine()  # as a loader's tasks share theirs: augmented in one call
    a = _task(0, transform=shared)
    b = _task(1, meta_split="test", transform=shared)  # its meta batch is the test set
    full = _task(2, batch_size=None, transform=shared)  # the whole training set, augmented
    plain = _task(3, transform=lambda x, g: x + torch.rand(x.shape, generator=g))
    own, own_again = (_Counting(**{f.name: getattr(_task(4), f.name) for f in fields(Task)})
                      for _ in range(2))
    requests = [(a, "train"), (b, "train"), (a, "meta"), (b, "meta"), (full, "train"),
                (plain, "train"), (own, "train"), (a, "train"), (plain, "meta"),
                (own, "train"), (full, "meta"), (b, "train")]
    ahead, one_by_one = _gens(11)
    drawn = draw_batches(requests, ahead)
    for (task, split), batch in zip(requests, drawn, strict=True):
        if task is own:
            task = own_again
        expected = (task.train_batch(one_by_one) if split == "train"
                    else task.meta_batch(one_by_one))
        assert _same(batch, expected), (split, task.batch_size)
    assert torch.equal(ahead.get_state(), one_by_one.get_state())
    assert own.calls == 2


def test_prefetch_window_follows_the_memory_budget():
    task = _task(0, batch_size=10, size=10, prefetch_mb=0.004)  # 10 x 100 floats = 4 kB
    assert task.prefetch_window() == 1
    assert _task(0, batch_size=10, size=10, prefetch_mb=0.04).prefetch_window() == 10
    assert _task(0, batch_size=10, size=10, prefetch_mb=0).prefetch_window() == 1
    assert _task(0, batch_size=128, size=28).prefetch_window() == 14  # 6 MB on the CPU
    with pytest.raises(ValueError, match="prefetch_mb"):
        _task(0, prefetch_mb=-1)


def _spy_windows(monkeypatch) -> list[int]:
    """Records how many draws each gather-and-augment call served."""
    sizes: list[int] = []
    realize = base._realize

    def spy(planned):
        sizes.append(len(planned))
        return realize(planned)

    monkeypatch.setattr(base, "_realize", spy)
    return sizes


def _meta_steps(prefetch_mb: float | None, warp: WarpGrad | None, parallel: bool
                ) -> tuple[torch.Tensor, list[dict]]:
    torch.manual_seed(0)
    model = conv4(3, filters=4, warp="conv3x3" if warp is not None else None)
    tasks = [_task(i, size=28, meta_split="train", prefetch_mb=prefetch_mb) for i in range(2)]
    learner = MetaLearner(model, F.cross_entropy, steps=6, warp=warp, init=Leap(),
                          parallel_tasks=parallel, seed=5)
    losses = [learner.meta_step(tasks) for _ in range(2)]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return flat, losses


@pytest.mark.parametrize("warp,parallel,drawn_ahead", [
    (WarpGrad("first-order"), False, True),
    (WarpGrad("first-order"), True, True),
    (WarpGrad("exact", points_per_update=3, batched=True), False, True),
    (WarpGrad("exact", "online"), False, False),  # its observer draws: one at a time
    (None, False, True),
])
def test_meta_steps_with_batches_drawn_ahead_equal_one_at_a_time(monkeypatch, warp, parallel,
                                                                 drawn_ahead):
    windows = _spy_windows(monkeypatch)
    ahead, ahead_stats = _meta_steps(None, warp, parallel)
    assert (max(windows) > 2) == drawn_ahead
    windows.clear()
    one, one_stats = _meta_steps(0, warp, parallel)
    assert max(windows) <= 2  # a point's two batches of one task still come together
    assert torch.equal(ahead, one)
    assert ahead_stats == one_stats


def test_an_observer_that_draws_must_say_so():
    """The engine draws ahead only where nothing else draws between its draws: an observer
    that draws and says so (``draws_batches``) sees the stream of one-at-a-time draws."""
    model = conv4(3, filters=4, warp=None)

    class Draws:
        needs_final_loss = False

        def __init__(self, task, generator, says):
            self.task, self.generator, self.seen = task, generator, []
            self.draws_batches = says

        def observe(self, record):
            self.seen.append(self.task.train_batch(self.generator)[0])

    def run(prefetch_mb, says):
        task = _task(0, size=28, prefetch_mb=prefetch_mb)
        generator = torch.Generator().manual_seed(2)
        observer = Draws(task, generator, says)
        result = adapt(model, model.init_theta(), task, F.cross_entropy,
                       InnerSGD(model.task_spec, 0.1), 5, observers=[observer],
                       generator=generator)
        return result.losses, torch.stack(observer.seen)

    reference = run(0, says=False)
    assert all(torch.equal(a, b) for a, b in zip(run(None, says=True), reference, strict=True))
    unsaid = run(None, says=False)  # drawn ahead anyway: the batches change
    assert not torch.equal(unsaid[1], reference[1])
