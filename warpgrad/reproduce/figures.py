"""The report's figures (PNG, through the run directories' atomic ``save_figure``). Each
function returns the path it wrote, as a string."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from warpgrad.experiments.rundir import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path, *, legend: bool = True, grid_axis: str = "both") -> str:
    if legend:
        ax.legend(fontsize=8)
    ax.grid(axis=grid_axis, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    _pyplot().close(fig)
    return str(path)


def _paper_value(text: str) -> float | None:
    match = re.match(r"\s*(-?\d+(\.\d+)?)", text)
    return float(match.group(1)) if match else None


def bars(path: Path, rows: Sequence[tuple[str, str, float, float, int]], unit: str,
         title: str) -> str:
    """Ours per row (mean with its 95% CI) and, where the paper gives one, its number as a
    hollow marker beside the bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(rows) + 2), 4.2))
    positions = range(len(rows))
    ax.bar(positions, [r[2] for r in rows], 0.6, yerr=[r[3] for r in rows], capsize=3,
           alpha=0.85, label="ours (95% CI)")
    paper = [(i, _paper_value(r[1])) for i, r in enumerate(rows)]
    paper = [(i, v) for i, v in paper if v is not None]
    if paper:
        ax.plot([i for i, _ in paper], [v for _, v in paper], "D", mfc="none", color="black",
                label="paper")
    ax.set_xticks(list(positions), [r[0] for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_title(title, fontsize=9)
    return _finish(fig, ax, path, grid_axis="y")


def margins(path: Path, points: Sequence[tuple[int, float, tuple[float, float]]]) -> str:
    """Warp-Leap's margin over Leap (accuracy points, 95% CI) by number of alphabets."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ns = [p[0] for p in points]
    means = [p[1] for p in points]
    ax.errorbar(ns, means, yerr=[[m - p[2][0] for m, p in zip(means, points)],
                                 [p[2][1] - m for m, p in zip(means, points)]],
                marker="o", capsize=4)
    ax.axhline(0.0, color="grey", linestyle=":")
    ax.set_xlabel("meta-training alphabets")
    ax.set_ylabel("Warp-Leap − Leap (accuracy points)")
    ax.set_title("margin of Warp-Leap over Leap (95% CI, paired)", fontsize=9)
    return _finish(fig, ax, path, legend=False)


def learning_curves(path: Path, curves: dict[str, list[list[float]]], *, ylabel: str,
                    title: str, level: float | None = None, level_label: str = "",
                    smooth: int = 20, log_scale: bool = False) -> str:
    """One line per method: the mean over seeds (one curve each) of a ``smooth``-point
    moving average, shaded between the seeds' lowest and highest; ``level`` a dotted
    reference line."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, runs in curves.items():
        length = min(len(r) for r in runs)
        data = np.array([r[:length] for r in runs], dtype=float)
        width = max(1, min(smooth, length))
        kernel = np.ones(width) / width
        smoothed = np.array([np.convolve(row, kernel, mode="valid") for row in data])
        x = np.arange(width, length + 1)
        (line,) = ax.plot(x, smoothed.mean(0), label=f"{label} ({len(runs)} seeds)")
        ax.fill_between(x, smoothed.min(0), smoothed.max(0), color=line.get_color(), alpha=0.2)
    if level is not None:
        ax.axhline(level, color="grey", linestyle=":", label=level_label)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("episode" if "reward" in ylabel else "meta-iteration")
    ax.set_ylabel(f"{ylabel} ({smooth}-point mean)" if smooth > 1 else ylabel)
    ax.set_title(f"{title}: mean over seeds, band = lowest to highest seed", fontsize=9)
    return _finish(fig, ax, path)


def memory(path: Path, steps: Sequence[int], curves: dict[str, list[float]]) -> str:
    """Peak memory of one meta-iteration against the adaptation length K."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, values in curves.items():
        ax.plot(list(steps), values, marker="o", label=label)
    ax.set_xlabel("adaptation steps K")
    ax.set_ylabel("peak memory of live tensors (MB)")
    ax.set_title("one meta-iteration, one task", fontsize=9)
    return _finish(fig, ax, path)
