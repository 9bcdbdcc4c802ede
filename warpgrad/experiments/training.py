"""The meta-training loop and the evaluation every experiment shares.

A method's files live in ``RUN_DIR/<method>/``: ``checkpoint.pt`` (atomic, every
``checkpoint_every`` iterations and at the end), ``metrics.csv`` (one row per
meta-iteration, rewritten with each checkpoint so it never runs ahead of it) and, when the
``tensorboard`` package is installed, TensorBoard event files. A killed run resumes from the
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

from warpgrad import distributed
from warpgrad._files import atomic_write
from warpgrad._stats import mean_ci
from warpgrad.algorithms import MetaLearner
from warpgrad.experiments.checkpoint import load_checkpoint, save_checkpoint
from warpgrad.tasks.base import Task

MetaBatchSampler = Callable[[torch.Generator], Sequence[Task]]
"""Draws one meta-batch of training tasks from the given generator."""


_EVAL_TASK_SEED_STRIDE = 7_919
"""Under torchrun, test task i seeds the generator ``seed + 20000 + stride * (i + 1)``."""


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
) -> Training:
    """Run ``iterations`` meta-steps of ``learner`` on meta-batches from ``sample``, resuming
    from ``method_dir/checkpoint.pt`` when it exists. Raises ``FloatingPointError`` when a
    meta-step returns a non-finite loss (a diverged run stops with a clear message).

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
        learner.load_state_dict(state["learner"])
        if state["iteration"] < iterations:  # a finished method needs no rank's stream
            distributed.restore(learner, state, state["iteration"])
        tasks.set_state(state["task_generator"])
        start, elapsed, history = state["iteration"], state["elapsed"], state["history"]
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
    return Training(elapsed, history)


def evaluate(learner: MetaLearner, tasks: Sequence[Task], *, seed: int, steps: int | None = None,
             progress: bool = True, desc: str = "evaluate") -> dict[str, dict[str, float]]:
    """Adapt from the meta-learned initialisation on each task and score its held-out data.
    Returns every metric of :meth:`MetaLearner.evaluate` as mean and 95% CI over tasks.

    Under torchrun the tasks are split over the ranks and their metrics gathered; each task
    then seeds the learner's generator from its index, so the figures do not depend on the
    number of processes (one process keeps its single stream of draws)."""
    if distributed.world_size() > 1:
        def one(index: int, task: Task) -> dict[str, float]:
            learner.generator.manual_seed(seed + 20_000 + _EVAL_TASK_SEED_STRIDE * (index + 1))
            return learner.evaluate(task, steps)

        per_task = distributed.split_map(one, tasks)
        return {key: mean_ci([m[key] for m in per_task]) for key in per_task[0]}
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


def _tensorboard(method_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(method_dir / "tensorboard"))
