"""The meta-training loop and the evaluation every experiment shares.

A method's files live in ``RUN_DIR/<method>/``: ``checkpoint.pt`` (atomic, every
``checkpoint_every`` iterations and at the end), ``metrics.csv`` (one row per
meta-iteration, rewritten with each checkpoint so it never runs ahead of it, and from the
checkpoint's history on every resume, so it never falls behind either) and, when the
``tensorboard`` package is installed, TensorBoard event files; with a :class:`Validation`,
``best.pt`` (the learner at its best validation score so far). A killed run resumes from the
checkpoint with nothing lost or repeated: the learner (model, optimisers, RNG), the task
sampler's RNG, the iteration counter, the elapsed time and the metrics history are restored.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from warpgrad import distributed
from warpgrad._stats import mean_ci
from warpgrad.algorithms import MetaLearner
from warpgrad.experiments.rundir import load_checkpoint, restoring, save_checkpoint, write_file
from warpgrad.tasks.base import Task

MetaBatchSampler = Callable[[torch.Generator], Sequence[Task]]
"""Draws one meta-batch of training tasks from the given generator."""


_EVAL_TASK_SEED_STRIDE = 7_919
"""Under torchrun, test task i seeds the generator ``seed + 20000 + stride * (i + 1)``."""


@dataclass
class Validation:
    """Score the learner on validation tasks every ``every`` meta-iterations and keep the
    best one in ``best.pt``.

    The scores go into that iteration's row of the history as ``val_<metric>`` (``test_``
    dropped: ``val_loss``, ``val_accuracy``). ``metric`` (e.g. ``"test_accuracy"``) and
    ``higher_is_better`` pick the best. Validation draws from its own seeded generator and
    restores the learner's, so a run's training is the same with or without it; its time is
    not counted as meta-training time.
    """

    tasks: Callable[[], Sequence[Task]]
    every: int
    metric: str
    higher_is_better: bool
    seed: int
    steps: int | None = None

    @property
    def key(self) -> str:
        return val_key(self.metric)

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def run(self, learner: MetaLearner, method_dir: Path, history: list[dict[str, float]],
            state: dict) -> dict[str, float]:
        """Validate, write ``state`` to ``best.pt`` on a new best; returns the row's
        scores."""
        generator = learner.generator.get_state()
        try:
            metrics = evaluate(learner, self.tasks(), seed=self.seed + 30_000,
                               steps=self.steps, progress=False)
        finally:
            learner.generator.set_state(generator)
        row = {val_key(k): v["mean"] for k, v in metrics.items() if k.startswith("test_")}
        earlier = [h[self.key] for h in history if self.key in h]
        score = row[self.key] if self.higher_is_better else -row[self.key]
        best = max((v if self.higher_is_better else -v for v in earlier), default=-math.inf)
        if score > best and distributed.is_main():  # ties keep the earlier checkpoint
            save_checkpoint(method_dir / "best.pt", state)
        return row


def val_key(metric: str) -> str:
    """The history's column for a validation metric: ``test_accuracy`` -> ``val_accuracy``."""
    return "val_" + metric.removeprefix("test_")


@dataclass
class Training:
    """A finished (or resumed-and-finished) meta-training: wall seconds summed over resumes
    and one dict of statistics per meta-iteration."""

    seconds: float
    history: list[dict[str, float]]


def meta_train(
    learner: MetaLearner,
    sample: MetaBatchSampler,
    method_dir: Path,
    *,
    iterations: int,
    checkpoint_every: int,
    seed: int,
    progress: bool = True,
    desc: str = "meta-train",
    validation: Validation | None = None,
) -> Training:
    """Run ``iterations`` meta-steps of ``learner`` on meta-batches from ``sample``, resuming
    from ``method_dir/checkpoint.pt`` when it exists (with the learning rates the learner
    was built with; and validating, see :class:`Validation`). Raises ``FloatingPointError``
    when a meta-step returns a non-finite loss or, at a checkpoint, the learner holds
    non-finite values (a diverged run stops with a clear message and its last finite
    checkpoint); warns when the loss did not improve.

    Under torchrun every rank calls it: each draws the whole meta-batch and adapts its share
    (:mod:`warpgrad.distributed`); rank 0 alone reads and writes ``method_dir``."""
    main = distributed.is_main()
    if main:
        method_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = method_dir / "checkpoint.pt"
    distributed.wrap(learner)
    tasks = torch.Generator().manual_seed(seed + 1)
    start, elapsed, history = 0, 0.0, []
    state = distributed.broadcast(
        load_checkpoint(checkpoint) if main and checkpoint.exists() else None)
    if state is not None:
        start, elapsed, history = _restore(learner, tasks, state, checkpoint)
        if start < iterations:  # a finished method needs no rank's stream
            distributed.restore(learner, state, start)
        if main:  # the checkpoint holds the history: a kill before metrics.csv loses nothing
            write_metrics(method_dir / "metrics.csv", history)
    board = _tensorboard(method_dir) if main else None
    bar = tqdm(range(start, iterations), desc=desc, initial=start, total=iterations,
               disable=not progress or not main, leave=False, file=sys.stderr, dynamic_ncols=True)
    clock = time.perf_counter()
    for iteration in bar:
        stats = learner.meta_step(distributed.shard(sample(tasks)))
        if not all(math.isfinite(v) for v in stats.values()):
            raise FloatingPointError(
                f"{desc}: diverged at meta-iteration {iteration + 1} (non-finite loss "
                f"{stats}); lower the meta or inner learning rates")
        done = iteration + 1
        history.append({"iteration": done, **stats})
        if validation is not None and validation.due(done):
            paused = time.perf_counter()
            seconds = elapsed + paused - clock
            state = {"learner": learner.state_dict(), "iteration": done, "elapsed": seconds}
            stats.update(validation.run(learner, method_dir, history[:-1], state))
            history[-1].update(stats)
            clock += time.perf_counter() - paused  # validation is not meta-training time
        bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
        if board is not None:
            for key, value in stats.items():
                board.add_scalar(key, value, done)
        if done % checkpoint_every == 0 or done == iterations:
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            ranks = distributed.checkpoint_state(learner)
            if main:
                save_checkpoint(checkpoint, {"learner": learner.state_dict(), "iteration": done,
                                             "task_generator": tasks.get_state(),
                                             "elapsed": elapsed, "history": history, **ranks})
                write_metrics(method_dir / "metrics.csv", history)
    if board is not None:
        board.close()
    if main:
        _warn_if_not_learning(history, desc)
    return Training(elapsed, history)


def resume(learner: MetaLearner, tasks: torch.Generator, checkpoint: Path
           ) -> tuple[int, float, list[dict[str, float]]]:
    """Restore ``learner`` (keeping the learning rates it was built with) and the task
    sampler's generator ``tasks`` from ``checkpoint``; returns ``(iteration, elapsed seconds,
    history)``. A checkpoint that is unreadable or of another model raises ``RunDirError``."""
    return _restore(learner, tasks, load_checkpoint(checkpoint), checkpoint)


def _restore(learner: MetaLearner, tasks: torch.Generator, state: dict[str, Any],
             checkpoint: Path) -> tuple[int, float, list[dict[str, float]]]:
    rates = _configured_rates(learner)
    with restoring(checkpoint):
        learner.load_state_dict(state["learner"])
        tasks.set_state(state["task_generator"])
        restored = state["iteration"], state["elapsed"], state["history"]
    _restore_rates(learner, rates)
    return restored


def check_checkpoint(build: Callable[[], MetaLearner], checkpoint: Path) -> None:
    """Fail now, before a resume writes anything, if ``checkpoint`` exists but cannot be
    resumed by a learner from ``build()`` (a throwaway one: it is loaded)."""
    if checkpoint.exists():
        resume(build(), torch.Generator(), checkpoint)


def _configured_rates(learner: MetaLearner) -> dict[str, Any]:
    """The learning rates (and inner momentum) the learner was built with: a resume may
    change them (``warpgrad train --resume RUN_DIR inner_lr=...``), while the checkpoint's
    optimiser states hold the old ones. Meta-learned rates and annealed schedules are left
    to the checkpoint."""
    rates: dict[str, Any] = {}
    for name in ("warp_optimizer", "init_optimizer"):
        optimizer = getattr(learner, name, None)
        if optimizer is not None and not (name == "init_optimizer" and learner.init_schedule):
            rates[name] = [group["lr"] for group in optimizer.param_groups]
    for name in ("lr", "momentum"):
        value = getattr(learner.optimizer, name, None)
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
            rates[name] = value.clone()
    return rates


def _restore_rates(learner: MetaLearner, rates: dict[str, Any]) -> None:
    for name, value in rates.items():
        if name in ("lr", "momentum"):
            getattr(learner.optimizer, name).copy_(value)
        else:
            for group, lr in zip(getattr(learner, name).param_groups, value):
                group["lr"] = lr


def _warn_if_not_learning(history: Sequence[dict[str, float]], desc: str) -> None:
    """Warn when the training loss after adaptation ends no lower than at meta-iteration 1
    (mean over the last tenth of a run of 10 meta-iterations or more): a learning rate too
    high, or a run too short."""
    if len(history) < 10 or "adapt_loss_last" not in history[0]:  # too short to judge
        return
    tail = history[-max(1, len(history) // 10):]
    first, last = history[0]["adapt_loss_last"], sum(h["adapt_loss_last"] for h in tail) / len(tail)
    if last >= first:
        warnings.warn(f"{desc}: the training loss after adaptation ({last:.4g}, last "
                      f"{len(tail)} meta-iterations) is no better than at meta-iteration 1 "
                      f"({first:.4g}); the learning rates may be too high, or the run too "
                      "short", stacklevel=2)


def evaluate(learner: MetaLearner, tasks: Sequence[Task], *, seed: int, steps: int | None = None,
             progress: bool = True, desc: str = "evaluate") -> dict[str, dict[str, float]]:
    """Adapt from the meta-learned initialisation on each task and score its held-out data.
    Returns every metric of :meth:`MetaLearner.evaluate` as mean and 95% CI over tasks, with
    the per-task ``values`` in the tasks' order.

    Under torchrun the tasks are split over the ranks and their metrics gathered; each task
    then seeds the learner's generator from its index, so the figures do not depend on the
    number of processes (one process keeps its single stream of draws)."""
    if distributed.world_size() > 1:
        def one(index: int, task: Task) -> dict[str, float]:
            learner.generator.manual_seed(seed + 20_000 + _EVAL_TASK_SEED_STRIDE * (index + 1))
            return learner.evaluate(task, steps)

        per_task = distributed.split_map(one, tasks)
        return {key: mean_ci([m[key] for m in per_task], keep=True) for key in per_task[0]}
    learner.generator.manual_seed(seed + 20_000)
    per_task = [learner.evaluate(task, steps)
                for task in tqdm(tasks, desc=desc, disable=not progress, leave=False,
                                 file=sys.stderr, dynamic_ncols=True)]
    return {key: mean_ci([m[key] for m in per_task], keep=True) for key in per_task[0]}


def write_metrics(path: Path, history: Sequence[dict[str, float]], first: str = "iteration"
                  ) -> None:
    """Per-iteration (or per-episode: ``first="episode"``) statistics as CSV, atomically;
    columns are the union of the rows' keys, ``first`` leading, the rest sorted."""
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != first, k))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(history)
    write_file(path, lambda f: f.write(text.getvalue().encode()))


def log_results(method_dir: Path, config: dict, metrics: dict[str, dict[str, float]],
                iteration: int) -> None:
    """The evaluation's means and the run's hyperparameters to TensorBoard (when installed):
    ``test/<metric>`` scalars and an hparams entry (scalar config fields)."""
    board = _tensorboard(method_dir)
    if board is None:
        return
    means = {f"test/{k}": v["mean"] for k, v in metrics.items()}
    for key, value in means.items():
        board.add_scalar(key, value, iteration)
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
               for k, v in config.items()}
    board.add_hparams(hparams, means, run_name="hparams")
    board.close()


def _tensorboard(method_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(method_dir / "tensorboard"))
