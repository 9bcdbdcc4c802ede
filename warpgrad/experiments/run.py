"""One run of a meta-learning experiment: every method meta-trained and evaluated side by side.

A run directory holds::

    config.json         the full resolved config (what ``--resume`` re-reads)
    environment.json    versions, device, threads, seed, command line
    <method>/           checkpoint.pt, metrics.csv, eval.json (and tensorboard/ if installed)
    learning_curves.png adaptation loss (and WarpGrad's meta-loss) per meta-iteration
    results.png         the headline metric per method with its 95% CI
    summary.json        the final figures (schema below)

``summary.json`` schema (version 1)::

    {"schema": 1, "experiment": str, "metric": str, "higher_is_better": bool,
     "results": {method: {"<metric>": {"mean": float, "ci95": float, "n": int}, ...,
                          "meta_train_seconds": float, "iterations": int}}}

where the metrics are those of :meth:`MetaLearner.evaluate` (``test_loss``,
``test_accuracy`` for classification, ``train_loss_first``/``_last``/``_auc``).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from warpgrad import distributed
from warpgrad.algorithms import MetaLearner
from warpgrad.experiments.checkpoint import write_json
from warpgrad.experiments.training import evaluate, meta_train
from warpgrad.tasks.base import Task

SCHEMA = 1


class Experiment(Protocol):
    """What a run needs from an experiment (see :mod:`warpgrad.experiments.sine` and
    :mod:`warpgrad.experiments.classification`)."""

    name: str
    metric: str
    higher_is_better: bool
    methods: Sequence[str]
    iterations: int
    checkpoint_every: int
    seed: int
    eval_steps: int | None  # adaptation steps at evaluation (None: as in meta-training)

    def build_learner(self, method: str) -> MetaLearner: ...

    def sample_meta_batch(self, generator: torch.Generator) -> Sequence[Task]: ...

    def test_tasks(self) -> Sequence[Task]: ...

    def record(self) -> dict[str, Any]: ...


def run(experiment: Experiment, config: dict[str, Any], run_dir: Path, *,
        progress: bool = True) -> dict[str, Any]:
    """Meta-train and evaluate every method of ``experiment`` (resuming what ``run_dir``
    already holds), write the run directory and return the summary. Under torchrun every
    rank calls it and gets the summary; rank 0 alone writes."""
    main = distributed.is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config)
        write_json(run_dir / "environment.json", environment(experiment.seed))
        write_json(run_dir / "data.json", experiment.record())
    test_tasks = experiment.test_tasks()
    results, histories = {}, {}
    for method in experiment.methods:
        learner = experiment.build_learner(method)
        method_dir = run_dir / method
        seconds, history = 0.0, []
        if method != "no-meta":
            training = meta_train(learner, experiment.sample_meta_batch, method_dir,
                                  iterations=experiment.iterations,
                                  checkpoint_every=experiment.checkpoint_every,
                                  seed=experiment.seed, progress=progress,
                                  desc=f"meta-train {method}")
            seconds, history = training.seconds, training.history
        metrics = evaluate(learner, test_tasks, seed=experiment.seed,
                           steps=experiment.eval_steps, progress=progress,
                           desc=f"evaluate {method}")
        result = {**metrics, "meta_train_seconds": seconds, "iterations": len(history)}
        if main:
            method_dir.mkdir(parents=True, exist_ok=True)
            write_json(method_dir / "eval.json", result)
        results[method], histories[method] = result, history
    summary = {"schema": SCHEMA, "experiment": experiment.name, "metric": experiment.metric,
               "higher_is_better": experiment.higher_is_better, "results": results}
    if main:
        write_json(run_dir / "summary.json", summary)
        plot_learning_curves(histories, run_dir / "learning_curves.png")
        plot_results([summary], run_dir / "results.png")
    return summary


def format_table(summaries: Sequence[dict[str, Any]], labels: Sequence[str] | None = None
                 ) -> str:
    """Side-by-side table of one or several runs' summaries."""
    metric = summaries[0]["metric"]
    scale, unit = (100.0, "%") if metric == "test_accuracy" else (1.0, "")
    title = metric.replace("_", " ") + (f" ({unit}, 95% CI)" if unit else " (95% CI)")
    head = "run" if labels else ""
    rows = [f"{head:<{24 if labels else 0}}{'method':<14} {title:<26} meta-train time"]
    for i, summary in enumerate(summaries):
        for method, r in summary["results"].items():
            m = r.get(metric)
            cell = "—" if m is None else f"{m['mean'] * scale:>7.2f} ± {m['ci95'] * scale:<7.2f}"
            label = f"{labels[i]:<24}" if labels else ""
            rows.append(f"{label}{method:<14} {cell:<26} {r['meta_train_seconds']:>8.1f} s")
    return "\n".join(rows)


def environment(seed: int) -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "seed": seed, "argv": sys.argv, "world_size": distributed.world_size()}


def plot_learning_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Adaptation loss at the last step (solid) and WarpGrad's meta-loss (dashed) per
    meta-iteration, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, history in histories.items():
        if not history:
            continue
        its = [h["iteration"] for h in history]
        if "adapt_loss_last" in history[0]:
            (line,) = ax.plot(its, [h["adapt_loss_last"] for h in history], label=method)
            if "warp_loss" in history[0]:
                ax.plot(its, [h["warp_loss"] for h in history], "--", color=line.get_color(),
                        label=f"{method} meta-loss")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("training loss after adaptation")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_results(summaries: Sequence[dict[str, Any]], path: Path,
                 labels: Sequence[str] | None = None) -> None:
    """The headline metric per method (and run) with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summaries[0]["metric"]
    bars = [(f"{labels[i]}\n{m}" if labels else m, r[metric])
            for i, s in enumerate(summaries) for m, r in s["results"].items() if metric in r]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(bars)), 4))
    ax.bar(range(len(bars)), [b[1]["mean"] for b in bars],
           yerr=[b[1]["ci95"] for b in bars], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
