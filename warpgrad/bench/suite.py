"""The suite: which figures run, in which order, and :func:`main`, behind ``warpgrad bench``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from warpgrad.bench import (
    common,
    convolutions,
    host_ops,
    memory,
    meta_iteration,
    overhead,
    protocols,
    scale_out,
    steps,
    switches,
    training,
)
from warpgrad.bench.common import SCALES, Scale
from warpgrad.bench.report import markdown, write_results
from warpgrad.bench.targets import check_targets

SCHEMA = 2
"""``bench.json``'s schema: 2 since the scale's switches are ``reference``, ``precision``,
``buffer``, ``tune_malloc``, ``cuda_graphs``, ``cudnn_benchmark`` and ``device`` (schema 1
had ``channels_last`` and ``compile``, and figure 8 ran tasks in parallel); every figure's
own entries are as in schema 1."""

Figure = Callable[[Scale, Callable[[str], None], dict[str, Any]], dict[str, Any]]

FIGURES: dict[str, Figure] = {
    "overhead": overhead.figure,
    "memory_vs_steps": memory.figure,
    "warped_step": steps.warped_step,
    "batched_objective": steps.batched_objective,
    "training": training.figure,
    "host_ops": host_ops.figure,
    "convolutions": convolutions.figure,
    "switches": switches.switches,
    "online": switches.online,
    "scale_out": scale_out.figure,
    "protocols": protocols.figure,
}
"""The figures after figure 1 (``meta_iteration``), in the order they run; each takes the
scale, the log and figure 1's entries measured in this run (figures 2 and 10 use them)."""

OPT_IN = ("training", "scale_out")
"""Figures that run only when named."""


@dataclass
class Suite:
    """Which figures to run (all but :data:`OPT_IN` by default) and where progress goes."""

    sections: tuple[str, ...] = ("meta_iteration", "overhead", "memory_vs_steps", "warped_step",
                                 "batched_objective", "switches", "online", "host_ops",
                                 "convolutions", "protocols")
    log: Callable[[str], None] = field(default=lambda s: None)


def known_figures() -> set[str]:
    """Every figure name :class:`Suite` accepts."""
    return {"meta_iteration", *FIGURES}


def run_suite(scale: Scale, suite: Suite | None = None) -> dict[str, Any]:
    """Run the benchmark suite at ``scale``; returns the JSON-ready results (seconds, ms, MB):
    ``schema``, ``scale``, ``machine``, one entry per figure run, and ``targets``."""
    suite = suite or Suite()
    results: dict[str, Any] = {"schema": SCHEMA, "scale": asdict(scale),
                               "machine": common.machine_info(scale.threads, scale.device)}
    wanted = set(suite.sections)
    meta: dict[str, Any] = {}
    if wanted & {"meta_iteration", "overhead"}:
        methods = (common.META_METHODS if "meta_iteration" in wanted
                   else common.META_METHODS[:2])
        meta = meta_iteration.figure(scale, suite.log, methods)
        if "meta_iteration" in wanted:
            results["meta_iteration"] = meta
    for name, figure in FIGURES.items():
        if name in wanted:
            results[name] = figure(scale, suite.log, meta)
    results["targets"] = check_targets(results)
    return results


def main(scale: str = "small", out: str | os.PathLike = "runs/bench", *,
         threads: int | None = None, measured_tasks: int | None = None,
         sections: tuple[str, ...] | None = None, reference: bool = False,
         precision: str = "fp32", buffer: str = "memory", tune_malloc: bool = True,
         cuda_graphs: bool = False, cudnn_benchmark: bool = False, device: str = "cpu",
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite, print the markdown and write ``bench.json``/``bench.md`` to ``out``.

    The switches (see :class:`~warpgrad.bench.common.Scale`) apply to every figure; figure 6
    sets the backend, allocator and precision itself, and figure 9 counts the accelerator's
    modes (the reference core's alone under ``reference``). ``reference`` has no bf16 and no
    CUDA graphs: asking for either with it is an error.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; expected 'fp32' or 'bf16'")
    if buffer not in ("memory", "float16", "disk"):
        raise ValueError(f"unknown buffer {buffer!r}; expected 'memory', 'float16' or 'disk'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here")
    if reference and (precision != "fp32" or cuda_graphs):
        raise ValueError("the reference core runs float32 without CUDA graphs: drop bf16 and "
                         "CUDA graphs, or the reference switch")
    if sections is not None and not set(sections) <= known_figures():
        raise ValueError(f"unknown figure(s) {sorted(set(sections) - known_figures())}; "
                         f"expected any of {sorted(known_figures())}")
    chosen = replace(SCALES[scale], reference=reference, precision=precision, buffer=buffer,
                     tune_malloc=tune_malloc, cuda_graphs=cuda_graphs,
                     cudnn_benchmark=cudnn_benchmark, device=device)
    if threads is not None:
        chosen = replace(chosen, threads=threads)
    if measured_tasks is not None:
        chosen = replace(chosen, measured_tasks=min(measured_tasks, chosen.meta_batch))
    suite = Suite(log=log) if sections is None else Suite(tuple(sections), log)
    results = run_suite(chosen, suite)
    log(markdown(results))
    json_path, md_path = write_results(results, out)
    log(f"wrote {json_path} and {md_path}")
    return results
