"""Continual sine regression: does a meta-learned warp stop SGD from forgetting?

The protocol (docs/paper.md, "Continual sine regression"). A task is one curve y = A sin(x − b),
A ~ U[0.1, 5], b ~ U[0, π], whose input range [-5, 5] is cut into ``subtasks`` consecutive
sub-intervals presented left to right, ``steps_per_subtask`` full-batch SGD steps on each
(``points_per_subtask`` points), no revisiting (:mod:`warpgrad.tasks.continual`). The learner
is an MLP 40-40; warped methods put a linear warp after each hidden layer. WarpGrad's
meta-loss at a point during sub-task j averages the loss over sub-tasks 0..j.

Methods (one per run, ``method``): ``warp-leap`` (WarpGrad + Leap's initialisation, the
paper's), ``warpgrad`` (warp only, θ_0 fixed), ``warp-reptile``, and the baselines without a
warp, plain SGD from a meta-learned initialisation: ``leap``, ``reptile``; ``no-meta`` (SGD
from the random initialisation) is always evaluated alongside as a reference.

Measured on ``eval_tasks`` held-out curves, by an observer on the engine's inner loop:

- the forgetting matrix ``F[i, j]``: MSE on sub-task j's held-out points after the last step
  of sub-task i (rows: time, columns: sub-task; above the diagonal: not yet seen);
- the final whole-range MSE (all held-out points after the last sub-task);
- the forgetting of the first sub-task, ``F[S-1, 0] − F[0, 0]``, and the mean forgetting
  ``mean_{j<S-1} (F[S-1, j] − F[j, j])``.

Outputs in the run directory: ``config.json``, ``environment.json``, ``metrics.csv`` (one row
per meta-iteration), ``checkpoint.pt`` (atomic, every ``checkpoint_every`` iterations; a run
restarted on the same directory resumes from it, nothing lost or repeated), ``fits.png``
(the fitted curve after the last sub-task against the true curve on a few test tasks),
``forgetting.png`` (the matrices) and ``summary.json``.

The paper does not give its continual budget; the default is 300 meta-iterations of 5 tasks,
and longer runs (``iterations=1000``) widen the gap.

Example (a tiny budget):
    >>> import tempfile
    >>> from pathlib import Path
    >>> from warpgrad.experiments import continual
    >>> config = continual.ContinualConfig(method="warp-leap", iterations=2, eval_tasks=2,
    ...                                    plot_tasks=1)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     summary = continual.run(config, Path(folder), progress=False)
    >>> sorted(summary["results"])
    ['no-meta', 'warp-leap']
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from warpgrad import accel
from warpgrad._stats import mean_ci
from warpgrad.algorithms import METHODS, MetaLearner, WarpGrad, make_learner
from warpgrad.engine.adapt import StepRecord
from warpgrad.experiments.rundir import claim, save_figure, write_json
from warpgrad.experiments.schemas import (  # noqa: F401 (re-exported, torch-free)
    CONTINUAL_METHODS,
    ContinualConfig,
)
from warpgrad.experiments.training import check_checkpoint
from warpgrad.experiments.training import meta_train as train_loop
from warpgrad.models import mlp
from warpgrad.tasks.continual import ContinualTask, continual_sine_tasks

REFERENCE = "no-meta"


def build_learner(config: ContinualConfig, method: str) -> MetaLearner:
    """The learner of ``method``, initialised from the run's seed (the same θ_0 for every
    method of a seed; warps start at the identity, so warped methods start as plain SGD)."""
    torch.manual_seed(config.seed)
    spec = METHODS[method]
    model = mlp(1, 1, hidden=config.hidden, warp="linear" if spec.needs_warps else None)
    if config.accelerate:
        model = accel.convert(model)
    warp = (WarpGrad(config.warp_variant, config.warp_regime, stride=config.warp_stride)
            if spec.warp else None)
    return make_learner(method, model, F.mse_loss, steps=config.steps, warp=warp,
                        inner_lr=config.inner_lr, warp_lr=config.meta_lr,
                        init_lr=config.meta_lr, meta_optimizer=config.meta_optimizer,
                        seed=config.seed)


# -- measurement ---------------------------------------------------------------------------

class ForgettingObserver:
    """Watches one continual task's adaptation; after the last step of each sub-task (the
    trajectory points θ_K, θ_2K, ..., θ_SK) it scores the held-out points of every sub-task.

    ``matrix`` ``[S, S]`` afterwards: ``matrix[i, j]`` is the MSE on sub-task j after
    sub-task i; ``theta`` ``[P]`` the final point θ_SK.
    """

    needs_final_loss = False

    def __init__(self, learner: MetaLearner, task: ContinualTask) -> None:
        self.learner, self.task = learner, task
        self.rows: list[list[float]] = []
        self.theta: Tensor | None = None

    def observe(self, record: StepRecord) -> None:
        if record.step == 0 or record.step % self.task.steps_per_subtask:
            return
        with torch.no_grad():
            self.rows.append([self.learner.loss_fn(self.learner.model(x, record.theta), y).item()
                              for x, y in map(self.task.subtask_test, range(self.task.subtasks))])
        self.theta = record.theta

    @property
    def matrix(self) -> Tensor:
        return torch.tensor(self.rows)


def measure(learner: MetaLearner, task: ContinualTask) -> dict[str, Any]:
    """Adapt ``learner`` through ``task``'s sub-tasks (from its θ_0, through its warps) and
    score it: ``forgetting_matrix`` ``[S][S]``, ``whole_range_mse``, ``first_forgetting``,
    ``mean_forgetting`` and ``theta`` (θ after the last sub-task, ``[P]``)."""
    if learner.steps != task.total_steps:
        raise ValueError(f"the learner takes {learner.steps} steps but the task's sequence is "
                         f"{task.total_steps} steps long")
    task.rewind()
    observer = ForgettingObserver(learner, task)
    learner.adapt(task, observers=[observer])
    task.rewind()
    matrix = observer.matrix
    x, y = task.test_batch()
    with torch.no_grad():
        whole = learner.loss_fn(learner.model(x, observer.theta), y).item()
    diagonal = matrix.diagonal()
    last = matrix[-1]
    return {"forgetting_matrix": matrix.tolist(), "whole_range_mse": whole,
            "first_forgetting": (last[0] - diagonal[0]).item(),
            "mean_forgetting": (last[:-1] - diagonal[:-1]).mean().item()
            if len(last) > 1 else 0.0,
            "theta": observer.theta}


def evaluate(config: ContinualConfig, learner: MetaLearner, tasks: list[ContinualTask], *,
             progress: bool = True, desc: str = "evaluate") -> dict[str, Any]:
    """Mean, 95% CI and per-task ``values`` over ``tasks`` of each score of :func:`measure`,
    and the mean forgetting matrix."""
    scores = [measure(learner, task) for task in tqdm(tasks, desc=desc, disable=not progress,
                                                      leave=False, file=sys.stderr)]
    result: dict[str, Any] = {
        name: mean_ci([s[name] for s in scores], keep=True)
        for name in ("whole_range_mse", "first_forgetting", "mean_forgetting")}
    result["final_first_mse"] = mean_ci([s["forgetting_matrix"][-1][0] for s in scores],
                                       keep=True)
    result["forgetting_matrix"] = torch.tensor(
        [s["forgetting_matrix"] for s in scores]).mean(0).tolist()
    return result


def held_out_tasks(config: ContinualConfig) -> list[ContinualTask]:
    """The held-out curves every method of a seed is scored on."""
    generator = torch.Generator().manual_seed(config.seed + 10_000)
    return continual_sine_tasks(config.eval_tasks, generator, **config.task_options())


# -- meta-training -------------------------------------------------------------------------

def meta_train(config: ContinualConfig, run_dir: Path, *, progress: bool = True
               ) -> tuple[MetaLearner, float]:
    """Meta-train ``config.method`` with the shared loop (checkpoints and ``metrics.csv`` in
    ``run_dir``, resuming from them). Returns the learner and the meta-training wall time in
    seconds (summed over resumes)."""
    learner = build_learner(config, config.method)
    if config.method == REFERENCE:
        return learner, 0.0
    training = train_loop(
        learner, lambda g: continual_sine_tasks(config.meta_batch, g, **config.task_options()),
        run_dir, iterations=config.iterations, checkpoint_every=config.checkpoint_every,
        seed=config.seed, progress=progress, desc=f"meta-train {config.method}")
    return learner, training.seconds


def run(config: ContinualConfig, run_dir: Path, *, progress: bool = True,
        record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Meta-train ``config.method``, score it and the no-meta reference on the same held-out
    curves, write the run directory (see the module docstring) and return the summary."""
    run_dir = Path(run_dir)
    check_checkpoint(lambda: build_learner(config, config.method), run_dir / "checkpoint.pt")
    directory = claim(run_dir, asdict(config) if record is None else record,
                      seed=config.seed)  # locked while this runs
    learner, seconds = meta_train(config, run_dir, progress=progress)
    tasks = held_out_tasks(config)
    learners = {config.method: learner}
    if config.method != REFERENCE:
        learners[REFERENCE] = build_learner(config, REFERENCE)
    results = {}
    for name, each in learners.items():
        results[name] = evaluate(config, each, tasks, progress=progress,
                                 desc=f"evaluate {name}")
    results[config.method]["meta_train_seconds"] = seconds
    plot_fits(run_dir / "fits.png", learners, tasks[:config.plot_tasks])
    plot_forgetting(run_dir / "forgetting.png", results)
    summary = {"experiment": "continual-sine", "method": config.method,
               "metric": "MSE after adapting through every sub-task in order",
               "subtasks": config.subtasks, "results": results}
    write_json(run_dir / "summary.json", summary)
    directory.release()
    return summary


# -- report --------------------------------------------------------------------------------

def format_table(summary: dict[str, Any]) -> str:
    """One row per method: whole-range MSE, first-sub-task MSE at the end, its forgetting and
    the mean forgetting, each mean ± 95% CI."""
    header = (f"{'method':<13} {'whole-range MSE':<17} {'sub-task 1 MSE':<17} "
              f"{'forgetting (1st)':<17} {'forgetting (mean)':<17}")
    rows = [header]
    for method, r in summary["results"].items():
        cells = [f"{r[k]['mean']:>7.3f} ± {r[k]['ci95']:<7.3f}"
                 for k in ("whole_range_mse", "final_first_mse", "first_forgetting",
                           "mean_forgetting")]
        rows.append(f"{method:<13} " + " ".join(f"{c:<17}" for c in cells))
    return "\n".join(rows)


def plot_fits(path: Path, learners: dict[str, MetaLearner], tasks: list[ContinualTask],
              grid_points: int = 400) -> None:
    """One panel per task: the true curve, each sub-task's adaptation points, and each
    learner's fit after the last sub-task; dotted lines mark the sub-task boundaries."""
    if not tasks:
        return
    fig = Figure(figsize=(4 * len(tasks), 3.2))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        lows = task.sub_test[0].amin(dim=(1, 2))
        highs = task.sub_test[0].amax(dim=(1, 2))
        low, high = lows.min().item(), highs.max().item()
        grid = torch.linspace(low, high, grid_points).unsqueeze(1)
        if task.target is not None:
            ax.plot(grid.numpy(), task.target(grid).numpy(), color="black", lw=2,
                    label="true curve")
        for j in range(task.subtasks):
            ax.scatter(task.sub_train[0][j].numpy(), task.sub_train[1][j].numpy(), s=10,
                       color=f"C{j % 10}", alpha=0.6)
            if j:
                ax.axvline((highs[j - 1] + lows[j]).item() / 2, color="grey", ls=":", lw=1)
        for name, learner in learners.items():
            theta = measure(learner, task)["theta"]
            with torch.no_grad():
                ax.plot(grid.numpy(), learner.model(grid, theta).numpy(), lw=1.5,
                        ls="--" if name == REFERENCE else "-", label=name)
        ax.set_xlabel("x")
    axes[0][0].set_ylabel("y")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle("fit after the last sub-task (sub-tasks learned left to right)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_forgetting(path: Path, results: dict[str, Any]) -> None:
    """The mean forgetting matrix of each method as a heat map (shared colour scale)."""
    matrices = {name: torch.tensor(r["forgetting_matrix"]) for name, r in results.items()}
    vmax = max(m.max().item() for m in matrices.values())
    fig = Figure(figsize=(4 * len(matrices), 3.6))
    axes = fig.subplots(1, len(matrices), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        image = ax.imshow(matrix.numpy(), vmin=0, vmax=vmax, cmap="viridis")
        for (i, j), value in zip(torch.cartesian_prod(torch.arange(len(matrix)),
                                                      torch.arange(len(matrix))).tolist(),
                                 matrix.flatten().tolist()):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_title(name)
        ax.set_xlabel("sub-task scored")
        ax.set_ylabel("after sub-task")
        fig.colorbar(image, ax=ax, fraction=0.046, label="MSE")
    fig.tight_layout()
    save_figure(fig, path)
