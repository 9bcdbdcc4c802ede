"""One run of a meta-learning experiment: every method meta-trained and evaluated side by side.

A run directory holds::

    config.json         the full resolved config (what ``--resume`` re-reads)
    environment.json    versions, device, threads, seed, command line; one entry per resume
    .lock               held by the process writing the directory (rundir.py)
    <method>/           checkpoint.pt, metrics.csv, eval.json (and tensorboard/ if installed)
                        (best.pt too when the experiment validates: ``val_every``)
    learning_curves.png adaptation loss (and WarpGrad's meta-loss) per meta-iteration
    results.png         the headline metric per method with its 95% CI
    summary.json        the final figures (schema below)

``summary.json`` schema (version 1)::

    {"schema": 1, "experiment": str, "metric": str, "higher_is_better": bool,
     "results": {method: {"<metric>": {"mean": float, "ci95": float, "n": int,
                                       "values": [float, ...]}, ...,  # one per test task
                          "meta_train_seconds": float, "iterations": int,
                          "checkpoint": "last" | "best" | "none"}},
     "chance": float}  # the metric's chance level, where the experiment knows it

``checkpoint`` says which one was evaluated (a run evaluates its last; ``warpgrad evaluate
--checkpoint best`` the best on validation; ``none`` for ``no-meta``, which has none) and
``iterations`` its meta-iteration.

where the metrics are those of :meth:`MetaLearner.evaluate` (``test_loss``,
``test_accuracy`` for classification, ``train_loss_first``/``_last``/``_auc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from warpgrad import distributed
from warpgrad.algorithms import MetaLearner
from warpgrad.experiments.rundir import claim, save_figure, write_json
from warpgrad.experiments.training import (
    Validation,
    check_checkpoint,
    evaluate,
    log_results,
    meta_train,
)
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

    # optional: experiments with ``val_every`` (> 0) and ``val_tasks()`` validate


def validation(experiment: Experiment) -> Validation | None:
    """The experiment's validation, if it has one (``val_every > 0``)."""
    every = getattr(experiment, "val_every", 0)
    if not every:
        return None
    return Validation(experiment.val_tasks, every, experiment.metric,  # type: ignore[attr-defined]
                      experiment.higher_is_better, experiment.seed, experiment.eval_steps)


def run(experiment: Experiment, config: dict[str, Any], run_dir: Path, *,
        progress: bool = True) -> dict[str, Any]:
    """Meta-train and evaluate every method of ``experiment`` (resuming what ``run_dir``
    already holds), write the run directory and return the summary. Under torchrun every
    rank calls it and gets the summary; rank 0 alone writes."""
    main = distributed.is_main()
    directory = None
    if main:
        for method in experiment.methods:  # a bad checkpoint fails the resume before any write
            check_checkpoint(partial(experiment.build_learner, method),
                             run_dir / method / "checkpoint.pt")
        directory = claim(run_dir, config, seed=experiment.seed)  # locked while this runs
        write_json(run_dir / "data.json", experiment.record())
    test_tasks = experiment.test_tasks()
    validate = validation(experiment)
    if validate is not None:
        validate.tasks()  # no validation tasks: say so before meta-training
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
                                  desc=f"meta-train {method}", validation=validate)
            seconds, history = training.seconds, training.history
        metrics = evaluate(learner, test_tasks, seed=experiment.seed,
                           steps=experiment.eval_steps, progress=progress,
                           desc=f"evaluate {method}")
        result = {**metrics, "meta_train_seconds": seconds, "iterations": len(history),
                  "checkpoint": "last" if method != "no-meta" else "none"}
        if main:
            method_dir.mkdir(parents=True, exist_ok=True)
            write_json(method_dir / "eval.json", result)
            log_results(method_dir, config.get("config", {}), metrics, len(history))
        results[method], histories[method] = result, history
    summary = summarise(experiment, results)
    if directory is not None:
        write_json(run_dir / "summary.json", summary)
        plot_learning_curves(histories, run_dir / "learning_curves.png", experiment.name)
        plot_results([summary], run_dir / "results.png")
        directory.release()
    return summary


def summarise(experiment: Experiment, results: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s content (``chance``: the metric's chance level, where known)."""
    summary = {"schema": SCHEMA, "experiment": experiment.name, "metric": experiment.metric,
               "higher_is_better": experiment.higher_is_better, "results": results}
    chance = getattr(experiment, "chance", None)
    if chance is not None:
        summary["chance"] = chance
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
            if m is None:
                cell = "—"
            elif m.get("n", 2) < 2:  # one task: no spread to estimate
                cell = f"{m['mean'] * scale:>7.2f} (n = 1, no CI)"
            else:
                cell = f"{m['mean'] * scale:>7.2f} ± {m['ci95'] * scale:<7.2f}"
            label = f"{labels[i]:<24}" if labels else ""
            rows.append(f"{label}{method:<14} {cell:<26} {r['meta_train_seconds']:>8.1f} s")
    return "\n".join(rows)


def plot_learning_curves(histories: dict[str, list[dict[str, float]]], path: Path,
                         title: str = "") -> None:
    """Adaptation loss at the last step (solid) and WarpGrad's meta-loss (dashed) per
    meta-iteration, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    meta_loss = False
    for method, history in histories.items():
        if not history:
            continue
        its = [h["iteration"] for h in history]
        if "adapt_loss_last" in history[0]:
            (line,) = ax.plot(its, [h["adapt_loss_last"] for h in history], label=method)
            if "warp_loss" in history[0]:
                meta_loss = True
                ax.plot(its, [h["warp_loss"] for h in history], "--", color=line.get_color(),
                        label=f"{method} meta-loss")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("training loss after adaptation" +
                  (" (solid);\nWarpGrad meta-loss (dashed)" if meta_loss else ""))
    ax.set_title(f"{title}: learning curves" if title else "learning curves")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_results(summaries: Sequence[dict[str, Any]], path: Path,
                 labels: Sequence[str] | None = None) -> None:
    """The headline metric per method, one colour per run (``labels``, in a legend), with
    95% CI error bars, in the table's units, and the chance level where the summary has
    one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summaries[0]["metric"]
    scale, unit = (100.0, " (%)") if metric == "test_accuracy" else (1.0, "")
    methods = list(dict.fromkeys(m for s in summaries for m, r in s["results"].items()
                                 if metric in r))
    width = 0.8 / len(summaries)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(methods) * len(summaries)
                                        ** 0.5), 4))
    for i, summary in enumerate(summaries):
        found = [(j, summary["results"][m][metric]) for j, m in enumerate(methods)
                 if metric in summary["results"].get(m, {})]
        ax.bar([j + (i - (len(summaries) - 1) / 2) * width for j, _ in found],
               [r["mean"] * scale for _, r in found], width * 0.95,
               yerr=[r["ci95"] * scale for _, r in found], capsize=4, alpha=0.85,
               label=labels[i] if labels else None)
    chances = {s.get("chance") for s in summaries} - {None}
    if len(chances) == 1:
        ax.axhline(chances.pop() * scale, color="grey", linestyle=":", label="chance")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric.replace("_", " ") + unit)
    ax.set_title("error bars: 95% confidence intervals over test tasks", fontsize=9)
    if labels or ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
