"""The geometry toy problem (the paper's appendix D): WarpGrad learns a geometry for gradient
descent on random variants of MATLAB's ``peaks`` surface.

**The tasks.** A surface of :mod:`warpgrad.tasks.peaks` and a starting point s on
[-3, 3]²; the task parameters θ are the point itself, the loss its height on the surface.
Plain gradient descent runs ``steps`` steps at ``inner_lr`` on x from x_0 = s.

**The warp, and why it sits where it does.** WarpGrad adapts θ by plain gradient descent
through a warp Ω that adaptation never changes, so the loss a task sees is the surface
read through Ω. Here θ = u lives in *warped coordinates* and the surface is read at the
*native* point

    x = Ω_s(u) = u + g(u) - g(s),    g(u) = W2 tanh(W1 u + b1)    (30 tanh units)

and warped descent is u_{k+1} = u_k - α ∇_u peaks(Ω_s(u_k)) = u_k - α DΩᵀ ∇peaks(x_k), from
u_0 = s. In native coordinates its step is -α DΩ DΩᵀ ∇peaks(x_k) up to O(α²): gradient
descent preconditioned by the warp's metric, the paper's section 2.3. The alternative of
applying P = DΩ DΩᵀ in native coordinates directly would be that first-order picture, not
WarpGrad, and would not let the library's objective train it. Three choices make the
comparison with plain descent fair and the problem learnable:

- the subtraction of g(s) anchors the warp at the start, Ω_s(s) = s: both descents start
  at the same native point with the same loss, so "ends lower" measures the path, not a
  warp that moves the start (a bias b2 would cancel in it, so there is none);
- W2 starts at zero, so Ω_s is the identity and warped descent starts as exactly plain
  descent (a random tanh net would squeeze the start square into a small patch);
- φ = (W1, b1, W2) is meta-trained by the library's own objective: the model is a
  :class:`~warpgrad.models.WarpedModel` whose task parameter is the displacement u - s
  (θ_0 = 0 for every task, the start riding in the task's inputs) and whose ``warp``
  submodule is g; ``make_learner("warpgrad", ...)`` with ``WarpGrad(variant,
  regime="online", share_step=True)``: Algorithm 1, the meta-loss at each trajectory point
  the loss one step later, exact or first-order.

A meta-step draws one surface and ``starts_per_step`` starts: a meta-batch of that many
library tasks (one surface and one start each).

**Outputs** in the run directory: ``config.json``, ``environment.json``, ``metrics.csv`` (one
row per meta-step), ``checkpoint.pt`` (atomic; a restarted run resumes from it, a finished
one re-evaluates to the same summary), ``surfaces.png`` and ``summary.json``: over the
held-out (surface, start) pairs, the fraction where warped descent ends lower than plain
descent by more than ``tie_tolerance`` (95% CI; likewise higher, and the rest tied: both
in the same minimum), the mean final losses of both (95% CI) and the per-pair final losses, in
the same order, for a paired test.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from warpgrad._stats import mean_ci
from warpgrad.algorithms import MetaLearner, WarpGrad, make_learner
from warpgrad.experiments.rundir import claim, save_figure, write_json
from warpgrad.experiments.schemas import GeometryConfig  # re-exported; torch-free
from warpgrad.experiments.training import check_checkpoint
from warpgrad.experiments.training import meta_train as train_loop
from warpgrad.models import WarpedModel
from warpgrad.tasks.base import Task
from warpgrad.tasks.peaks import (
    peaks,
    peaks_loss,
    peaks_task,
    sample_coefficients,
    sample_starts,
)


class ResidualWarp(nn.Module):
    """g(u) = W2 tanh(W1 u + b1): the non-identity part of the warp, ``[..., 2] -> [..., 2]``.
    W2 starts at zero, so g = 0 and the warp is the identity until meta-training moves it."""

    def __init__(self, hidden: int = 30) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, hidden)
        self.out = nn.Linear(hidden, 2, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, u: Tensor) -> Tensor:
        return self.out(torch.tanh(self.hidden(u)))


class WarpedPoint(nn.Module):
    """The point model: task parameter ``delta`` ``[2]`` (u - s, zero at the start), warp
    submodule ``warp``. ``forward(start [N, 2])`` is the native point Ω_s(s + delta)."""

    def __init__(self, hidden: int = 30) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(2))
        self.warp = ResidualWarp(hidden)

    def native(self, u: Tensor, start: Tensor) -> Tensor:
        """Ω_s(u) = u + g(u) - g(s) for warped points ``u`` and starts ``start``, both
        ``[..., 2]``: ``[..., 2]``."""
        return u + self.warp(u) - self.warp(start)

    def forward(self, start: Tensor) -> Tensor:
        return self.native(start + self.delta, start)


def build_learner(config: GeometryConfig) -> MetaLearner:
    """The warped point model (its warp's hidden layer initialised from the run's seed) and
    WarpGrad's online learner for it, θ_0 fixed at the start."""
    torch.manual_seed(config.seed)
    model = WarpedModel(WarpedPoint(config.warp_hidden), warps=["warp"])
    warp = WarpGrad(config.warp_variant, "online", share_step=True)
    return make_learner("warpgrad", model, peaks_loss(config.surface), steps=config.steps,
                        warp=warp, inner_lr=config.inner_lr, warp_lr=config.warp_lr,
                        meta_optimizer=config.meta_optimizer, seed=config.seed)


def training_tasks(config: GeometryConfig, generator: torch.Generator) -> list[Task]:
    """One meta-step's tasks: one random surface from ``starts_per_step`` random starts."""
    coefficients = sample_coefficients(1, generator, coefficient_spread=config.coefficient_spread,
                                       offset_spread=config.offset_spread)[0]
    starts = sample_starts(config.starts_per_step, generator, *config.start_range)
    return [peaks_task(s, coefficients) for s in starts]


def held_out_pairs(config: GeometryConfig) -> tuple[Tensor, Tensor]:
    """The evaluation's (surface, start) pairs, surface-major: coefficients ``[T*S, 6]`` and
    starts ``[T*S, 2]`` for ``T = eval_tasks`` surfaces, ``S = eval_starts`` starts each."""
    generator = torch.Generator().manual_seed(config.seed + 10_000)
    coefficients = sample_coefficients(config.eval_tasks, generator,
                                       coefficient_spread=config.coefficient_spread,
                                       offset_spread=config.offset_spread)
    starts = sample_starts(config.eval_tasks * config.eval_starts, generator,
                           *config.start_range)
    return coefficients.repeat_interleave(config.eval_starts, dim=0), starts


def descend(coefficients: Tensor, starts: Tensor, *, surface: str, steps: int, lr: float,
            model: WarpedPoint | None = None) -> tuple[Tensor, Tensor]:
    """Gradient descent from ``starts`` ``[B, 2]`` on the surfaces ``coefficients``
    ``[B, 6]``, all pairs at once: plain on x (``model=None``) or warped, on u through
    ``model``'s Ω_s. Returns the native points ``[steps + 1, B, 2]`` and the points descent
    moved ``[steps + 1, B, 2]`` (u; the same as the native ones when plain)."""
    point = starts.detach().clone()
    walked, native = [], []
    with torch.enable_grad():
        for step in range(steps + 1):
            point = point.detach().requires_grad_(True)
            x = point if model is None else model.native(point, starts)
            walked.append(point.detach())
            native.append(x.detach())
            if step == steps:
                break
            # pairs are independent: the sum's gradient is each pair's own
            grad, = torch.autograd.grad(peaks(x, coefficients, surface).sum(), point)
            point = point - lr * grad
    return torch.stack(native), torch.stack(walked)


def evaluate(config: GeometryConfig, model: WarpedPoint) -> dict[str, Any]:
    """Final losses of plain and warped descent on every held-out pair, and their
    comparison (see the module docstring)."""
    coefficients, starts = held_out_pairs(config)
    options = {"surface": config.surface, "steps": config.steps, "lr": config.inner_lr}
    plain, _ = descend(coefficients, starts, **options)
    warped, _ = descend(coefficients, starts, model=model, **options)
    plain_final = peaks(plain[-1], coefficients, config.surface).tolist()
    warped_final = peaks(warped[-1], coefficients, config.surface).tolist()
    tolerance = config.tie_tolerance
    lower = [float(w < p - tolerance) for w, p in zip(warped_final, plain_final)]
    higher = [float(w > p + tolerance) for w, p in zip(warped_final, plain_final)]
    return {
        "warped_lower_fraction": mean_ci(lower),
        "warped_higher_fraction": mean_ci(higher),
        "tie_fraction": 1.0 - (sum(lower) + sum(higher)) / len(lower),
        "plain_final_loss": mean_ci(plain_final),
        "warped_final_loss": mean_ci(warped_final),
        "start_loss": mean_ci(peaks(starts, coefficients, config.surface).tolist()),
        "pairs": {"plain_final_loss": plain_final, "warped_final_loss": warped_final},
    }


def run(config: GeometryConfig, run_dir: Path, *, progress: bool = True,
        record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Meta-train the warp, compare warped with plain descent on the held-out pairs, write
    the run directory (see the module docstring) and return the summary."""
    run_dir = Path(run_dir)
    check_checkpoint(lambda: build_learner(config), run_dir / "checkpoint.pt")
    directory = claim(run_dir, asdict(config) if record is None else record,
                      seed=config.seed)  # locked while this runs
    learner = build_learner(config)
    training = train_loop(learner, lambda g: training_tasks(config, g), run_dir,
                          iterations=config.iterations, checkpoint_every=config.checkpoint_every,
                          seed=config.seed, progress=progress, desc="meta-train warp")
    model = learner.model.module
    results = evaluate(config, model)
    results["meta_train_seconds"] = training.seconds
    coefficients, starts = held_out_pairs(config)
    plot_surfaces(run_dir / "surfaces.png", model, coefficients[0],
                  starts[:config.plot_starts], config)
    summary = {"experiment": "geometry", "method": "warpgrad",
               "metric": "surface height after gradient descent (lower is better)",
               "surface": config.surface, "eval_tasks": config.eval_tasks,
               "eval_starts": config.eval_starts, "tie_tolerance": config.tie_tolerance,
               "results": results}
    write_json(run_dir / "summary.json", summary)
    directory.release()
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Mean final loss of plain and warped descent (± 95% CI) and the fraction of held-out
    pairs where warped descent ends lower."""
    r = summary["results"]
    rows = [f"{'descent':<8} {'final loss':<18} {'ends lower (fraction of pairs)':<32}"]
    for name, other in (("plain", "higher"), ("warped", "lower")):
        loss, fraction = r[f"{name}_final_loss"], r[f"warped_{other}_fraction"]
        rows.append(f"{name:<8} {loss['mean']:>7.3f} ± {loss['ci95']:<8.3f} "
                    f"{fraction['mean']:.3f} ± {fraction['ci95']:.3f} of {fraction['n']}")
    rows.append(f"ties (within {summary.get('tie_tolerance', 0)}): {r['tie_fraction']:.3f}")
    return "\n".join(rows)


def plot_surfaces(path: Path, model: WarpedPoint, coefficients: Tensor, starts: Tensor,
                  config: GeometryConfig, resolution: int = 121) -> None:
    """Two panels for one surface: its height over native coordinates x with plain descent
    (solid) and warped descent read in native coordinates x_k = Ω_s(u_k) (dashed) from each
    of ``starts`` ``[n, 2]``; and, for the first start s, the same surface over warped
    coordinates u (its height at Ω_s(u): what warped descent descends, plainly) with warped
    descent's path u_k."""
    low, high = config.start_range
    axis = torch.linspace(low, high, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)  # [R, R, 2]
    options = {"surface": config.surface, "steps": config.steps, "lr": config.inner_lr}
    many = coefficients.expand(len(starts), 6)
    plain, _ = descend(many, starts, **options)
    warped, walked = descend(many, starts, model=model, **options)
    with torch.no_grad():
        native_height = peaks(grid, coefficients, config.surface)
        warped_height = peaks(model.native(grid, starts[0].expand_as(grid)), coefficients,
                              config.surface)
    fig = Figure(figsize=(11.0, 4.8))
    left, right = fig.subplots(1, 2)
    extent = (low, high)
    for ax, height, title, label in (
            (left, native_height, "native coordinates: plain (solid), warped (dashed)", "x"),
            (right, warped_height, "warped coordinates (first start): warped descent",
             "u")):
        shown = ax.contourf(axis.numpy(), axis.numpy(), height.numpy(), levels=30,
                            cmap="viridis")
        ax.set_xlim(*extent)
        ax.set_ylim(*extent)
        ax.set_xlabel(f"{label}1")
        ax.set_ylabel(f"{label}2")
        ax.set_title(title, fontsize=10)
        fig.colorbar(shown, ax=ax, label="loss (surface height)")
    for i in range(len(starts)):
        colour = f"C{i % 10}"
        left.plot(*_xy(plain[:, i]), color=colour, lw=1.6)
        left.plot(*_xy(warped[:, i]), color=colour, lw=1.6, ls="--")
        left.plot(*starts[i].tolist(), "o", color=colour, mec="white")
    right.plot(*_xy(walked[:, 0]), color="C0", lw=1.6, ls="--")
    right.plot(*starts[0].tolist(), "o", color="C0", mec="white")
    fig.suptitle(f"held-out surface ({config.surface}), {config.steps} steps at "
                 f"{config.inner_lr}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _xy(path: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A path ``[K, 2]`` as the x and y arrays matplotlib plots."""
    values = path.numpy()
    return values[:, 0], values[:, 1]
