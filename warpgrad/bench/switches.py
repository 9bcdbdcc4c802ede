"""Figures 6 and 7: one task's Warp-Leap meta-iteration (seconds scaled to the meta-batch)
under different settings, measured in the same run.

6. ``switches``: a ladder from the reference core up, one switch added per rung (see
   :data:`SWITCH_LADDER`), each rung's speed-up over the first. It sets the backend, the
   allocator and the precision itself; the run's other switches (buffer, CUDA graphs,
   device, threads) apply to it.
7. ``online``: Warp-Leap with the online objective, a fresh step per point versus the
   adaptation's own step (``WarpGrad(share_step=True)``, the paper's Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from warpgrad.bench.common import Scale
from warpgrad.bench.meta_iteration import one_task

SWITCH_LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("reference core", {"reference": True, "tune_malloc": False}),
    ("+ accelerator (default malloc)", {"reference": False, "tune_malloc": False}),
    ("+ tuned malloc (the command's default)", {"reference": False, "tune_malloc": True}),
    ("+ bf16", {"reference": False, "tune_malloc": True, "precision": "bf16"}),
)
"""Figure 6's rungs: a label and the :class:`~warpgrad.bench.common.Scale` switches it sets
(fp32 unless stated). The first is the reference core (no :func:`warpgrad.accel.convert`)
with glibc's default allocator; then the accelerator; then
:func:`warpgrad.accel.tune_allocator`, as ``warpgrad bench`` runs by default; then bfloat16
autocast."""


def switches(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]
             ) -> dict[str, Any]:
    """Figure 6, per variant: a list of rungs, each its ``label``, ``switches``, one task's
    figures (:func:`~warpgrad.bench.meta_iteration.one_task`) and its ``speedup`` over the
    first rung."""
    del meta
    out: dict[str, Any] = {}
    for variant in ("first-order", "exact"):
        rungs: list[dict[str, Any]] = []
        for label, settings in SWITCH_LADDER:
            log(f"switches {variant}: {label} ...")
            rung = replace(scale, **{"precision": "fp32", **settings})
            if rung.reference:  # the reference core has no CUDA graphs
                rung = replace(rung, cuda_graphs=False)
            r = one_task(rung, f"warp-leap-{variant}", log)
            speedup = rungs[0]["task_seconds"] / r["task_seconds"] if rungs else 1.0
            rungs.append({"label": label, "switches": settings, **r, "speedup": speedup})
        out[variant] = rungs
    return out


def online(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Figure 7, per variant: ``online`` and ``online-shared`` (one task's figures each) and
    the ``speedup`` of sharing the step."""
    del meta
    out: dict[str, Any] = {}
    for variant in ("first-order", "exact"):
        entry: dict[str, Any] = {}
        for mode in ("online", "online-shared"):
            log(f"online {variant} {mode} ...")
            entry[mode] = one_task(scale, f"warp-leap-{variant}@{mode}", log)
        entry["speedup"] = entry["online"]["task_seconds"] / entry["online-shared"]["task_seconds"]
        out[variant] = entry
    return out
