"""Sine-regression meta-training: Warp-Leap, Warp-MAML and Leap against no meta-learning.

The protocol (Finn et al., 2017, as the WarpGrad paper uses it): y = A sin(x − b),
A ~ U[0.1, 5], b ~ U[0, π], x ~ U[-5, 5], 10-shot; an MLP 40-40, linear warps after each
hidden layer for the warped methods. Each method meta-trains from the same seed, then every
method (and "no-meta": the same adaptation from a random initialisation) is scored by the
post-adaptation MSE on the same held-out tasks, mean and 95% confidence interval.

Run ``python -m warpgrad.experiments.sine --help``. A run directory holds ``config.json``,
``environment.json``, ``metrics-<method>.csv``, ``checkpoint-<method>.pt`` (atomic, every
``checkpoint_every`` iterations) and ``summary.json``; ``--resume RUN_DIR`` continues a killed
run from its checkpoints with nothing lost or repeated.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from warpgrad._files import atomic_write
from warpgrad.algorithms import METHODS, MetaLearner, WarpGrad, make_learner
from warpgrad.experiments.checkpoint import load_checkpoint, save_checkpoint, write_json
from warpgrad.models import mlp
from warpgrad.tasks import sine_tasks

BASELINE = "no-meta"


@dataclass
class SineConfig:
    """Every setting of a sine run (recorded in ``config.json``)."""

    methods: tuple[str, ...] = ("warp-leap", "warp-maml", "leap")
    iterations: int = 150
    meta_batch: int = 10
    steps: int = 5
    inner_lr: float = 0.01
    meta_lr: float = 3e-3
    rate_lr: float = 1e-3
    meta_optimizer: str = "adam"
    warp_variant: str = "exact"
    warp_regime: str = "offline"
    points_per_update: int = 6
    shots: int = 10
    test_shots: int = 100
    hidden: tuple[int, ...] = (40, 40)
    eval_tasks: int = 200
    checkpoint_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        self.hidden = tuple(self.hidden)
        unknown = [m for m in self.methods if m not in METHODS or m == BASELINE]
        if unknown:
            choices = sorted(set(METHODS) - {BASELINE})
            raise ValueError(f"unknown method(s) {unknown}; expected any of {choices} "
                             f"({BASELINE} is always run)")
        for name in ("iterations", "meta_batch", "steps", "eval_tasks", "checkpoint_every",
                     "points_per_update", "shots", "test_shots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def build_learner(config: SineConfig, method: str) -> MetaLearner:
    """The learner of one method, initialised from the run's seed (the same θ_0 for all)."""
    torch.manual_seed(config.seed)
    spec = METHODS[method]
    model = mlp(1, 1, hidden=config.hidden, warp="linear" if spec.needs_warps else None)
    warp = (WarpGrad(config.warp_variant, config.warp_regime,
                     points_per_update=config.points_per_update,
                     batched=config.points_per_update > 1) if spec.warp else None)
    return make_learner(method, model, F.mse_loss,
                        steps=config.steps, warp=warp, inner_lr=config.inner_lr,
                        warp_lr=config.meta_lr, init_lr=config.meta_lr, rate_lr=config.rate_lr,
                        meta_optimizer=config.meta_optimizer, seed=config.seed)


def meta_train(config: SineConfig, method: str, run_dir: Path, *, progress: bool = True
               ) -> tuple[MetaLearner, float]:
    """Meta-train one method, resuming from its checkpoint in ``run_dir`` if there is one.
    Returns the learner and the meta-training wall time in seconds (summed over resumes)."""
    learner = build_learner(config, method)
    tasks = torch.Generator().manual_seed(config.seed + 1)
    checkpoint = run_dir / f"checkpoint-{method}.pt"
    start, elapsed, history = 0, 0.0, []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        learner.load_state_dict(state["learner"])
        tasks.set_state(state["task_generator"])
        start, elapsed, history = state["iteration"], state["elapsed"], state["history"]
    bar = tqdm(range(start, config.iterations), desc=f"meta-train {method}", initial=start,
               total=config.iterations, disable=not progress, leave=False, file=sys.stderr)
    clock = time.perf_counter()
    for iteration in bar:
        stats = learner.meta_step(sine_tasks(config.meta_batch, tasks, shots=config.shots,
                                             test_shots=config.test_shots))
        if not all(math.isfinite(v) for v in stats.values()):
            raise FloatingPointError(
                f"{method} diverged at meta-iteration {iteration + 1} (non-finite loss: "
                f"{stats}); lower meta_lr/rate_lr or inner_lr")
        history.append({"iteration": iteration + 1, **stats})
        bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
        done = iteration + 1
        if done % config.checkpoint_every == 0 or done == config.iterations:
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            save_checkpoint(checkpoint, {"learner": learner.state_dict(), "iteration": done,
                                         "task_generator": tasks.get_state(),
                                         "elapsed": elapsed, "history": history})
            _write_metrics(run_dir / f"metrics-{method}.csv", history)
    return learner, elapsed


def evaluate(config: SineConfig, learner: MetaLearner, *, progress: bool = True) -> dict:
    """Post-adaptation test MSE over ``eval_tasks`` held-out tasks: mean and 95% CI."""
    generator = torch.Generator().manual_seed(config.seed + 10_000)
    tasks = sine_tasks(config.eval_tasks, generator, shots=config.shots,
                       test_shots=config.test_shots)
    learner.generator.manual_seed(config.seed + 20_000)
    losses = [learner.evaluate(task)["test_loss"]
              for task in tqdm(tasks, desc="evaluate", disable=not progress, leave=False,
                               file=sys.stderr)]
    return mean_ci(losses)


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return {"mean": mean, "ci95": 1.96 * math.sqrt(var / n), "n": n}


def run(config: SineConfig, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Meta-train every method, evaluate all against no meta-learning; write the run
    directory and return the summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", asdict(config))
    write_json(run_dir / "environment.json", environment())
    results = {}
    for method in (BASELINE, *config.methods):
        if method == BASELINE:
            learner, seconds = build_learner(config, BASELINE), 0.0
        else:
            learner, seconds = meta_train(config, method, run_dir, progress=progress)
        results[method] = {"test_mse": evaluate(config, learner, progress=progress),
                           "meta_train_seconds": seconds}
    summary = {"experiment": "sine", "metric": "post-adaptation test MSE", "results": results}
    write_json(run_dir / "summary.json", summary)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    rows = [f"{'method':<14} {'test MSE (95% CI)':<22} meta-train time"]
    for method, r in summary["results"].items():
        mse = r["test_mse"]
        rows.append(f"{method:<14} {mse['mean']:>8.3f} ± {mse['ci95']:<11.3f} "
                    f"{r['meta_train_seconds']:>8.1f} s")
    return "\n".join(rows)


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "device": "cpu",
            "threads": torch.get_num_threads()}


def _write_metrics(path: Path, history: list[dict]) -> None:
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "iteration", k))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m warpgrad.experiments.sine",
        description="Meta-train on sine regression and compare methods with no meta-learning.")
    parser.add_argument("--out", type=Path, help="new run directory (default runs/sine-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue a killed run from its checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    for f in fields(SineConfig):
        default = getattr(SineConfig, f.name)
        if isinstance(default, tuple):
            parser.add_argument(f"--{f.name.replace('_', '-')}", nargs="+",
                                type=type(default[0]),
                                help=f"default: {' '.join(map(str, default))}")
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(default),
                                help=f"default: {default}")
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(SineConfig)
                 if getattr(args, f.name) is not None}
    try:
        if args.resume is not None:
            config_path = args.resume / "config.json"
            if not config_path.is_file():
                parser.error(f"{args.resume} is not a run directory (no config.json)")
            if overrides:
                parser.error("--resume continues a run with its recorded config; "
                             "drop the overrides")
            config = SineConfig(**json.loads(config_path.read_text()))
            run_dir = args.resume
        else:
            config = SineConfig(**overrides)
            run_dir = args.out or Path("runs") / time.strftime("sine-%Y%m%d-%H%M%S")
            if run_dir.exists():
                parser.error(f"run directory {run_dir} already exists; use --resume to "
                             "continue it or pick another --out")
    except ValueError as error:
        parser.error(str(error))
    try:
        summary = run(config, run_dir, progress=not args.no_progress)
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(summary))
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
