"""The meta-training loop and the evaluation every experiment shares.

A method's files live in ``RUN_DIR/<method>/``: ``checkpoint.pt`` (atomic, every
``checkpoint_every`` iterations and at the end), ``metrics.csv`` (one row per
meta-iteration, rewritten with each checkpoint so it never runs ahead of it) and, when the
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from warpgrad._files import atomic_write
from warpgrad._stats import mean_ci
from warpgrad.algorithms import MetaLearner
from warpgrad.experiments.checkpoint import load_checkpoint, save_checkpoint
from warpgrad.tasks.base import Task

MetaBatchSampler = Callable[[torch.Generator], Sequence[Task]]
"""Draws one meta-batch of training tasks from the given generator."""


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
        if score > best:  # ties keep the earlier checkpoint
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
    from ``method_dir/checkpoint.pt`` when it exists (and validating, see
    :class:`Validation`). Raises ``FloatingPointError`` when a meta-step returns a non-finite
    loss (a diverged run stops with a clear message)."""
    method_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = method_dir / "checkpoint.pt"
    tasks = torch.Generator().manual_seed(seed + 1)
    start, elapsed, history = 0, 0.0, []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        learner.load_state_dict(state["learner"])
        tasks.set_state(state["task_generator"])
        start, elapsed, history = state["iteration"], state["elapsed"], state["history"]
    board = _tensorboard(method_dir)
    bar = tqdm(range(start, iterations), desc=desc, initial=start, total=iterations,
               disable=not progress, leave=False, file=sys.stderr, dynamic_ncols=True)
    clock = time.perf_counter()
    for iteration in bar:
        stats = learner.meta_step(sample(tasks))
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
            save_checkpoint(checkpoint, {"learner": learner.state_dict(), "iteration": done,
                                         "task_generator": tasks.get_state(),
                                         "elapsed": elapsed, "history": history})
            write_metrics(method_dir / "metrics.csv", history)
    if board is not None:
        board.close()
    return Training(elapsed, history)


def evaluate(learner: MetaLearner, tasks: Sequence[Task], *, seed: int, steps: int | None = None,
             progress: bool = True, desc: str = "evaluate") -> dict[str, dict[str, float]]:
    """Adapt from the meta-learned initialisation on each task and score its held-out data.
    Returns every metric of :meth:`MetaLearner.evaluate` as mean and 95% CI over tasks."""
    learner.generator.manual_seed(seed + 20_000)
    per_task = [learner.evaluate(task, steps)
                for task in tqdm(tasks, desc=desc, disable=not progress, leave=False,
                                 file=sys.stderr, dynamic_ncols=True)]
    return {key: mean_ci([m[key] for m in per_task]) for key in per_task[0]}


def write_metrics(path: Path, history: Sequence[dict[str, float]], first: str = "iteration"
                  ) -> None:
    """Per-iteration (or per-episode: ``first="episode"``) statistics as CSV, atomically;
    columns are the union of the rows' keys, ``first`` leading, the rest sorted."""
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != first, k))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


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
