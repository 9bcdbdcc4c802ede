"""Figure 1, ``meta_iteration``: one meta-iteration of the multi-shot protocol, in seconds
and peak memory (MB), for each of :data:`~warpgrad.bench.common.META_METHODS`.

At ``--scale full`` only ``measured_tasks`` of the meta-batch of 20 tasks are run and the
figures are extrapolated (every cost is per task); the entry says how (``how``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from warpgrad.bench import common
from warpgrad.bench.common import (
    MB,
    Scale,
    build_learner,
    build_model,
    build_tasks,
    case,
    is_plain,
    measure,
    warm_up,
)


@case("meta_iteration")
def case_meta_iteration(scale: Scale, method: str) -> dict[str, float]:
    """One meta-iteration over ``scale.measured_tasks`` tasks: ``seconds``, ``peak_rss_mb``,
    ``peak_growth_mb`` (and ``peak_device_mb`` on a GPU), and ``num_params`` (θ's size P)."""
    tasks = build_tasks(scale.batch_size, scale.measured_tasks)
    warm_up(method, scale.filters, tasks)
    learner = build_learner(method, build_model(scale.filters, not is_plain(method)),
                            scale.steps)
    result = measure(lambda: learner.meta_step(tasks))
    result["num_params"] = learner.model.task_spec.numel
    return result


def figure(scale: Scale, log: Callable[[str], None],
           methods: Sequence[str] = common.META_METHODS) -> dict[str, Any]:
    """Figure 1 for ``methods``: per method the measured figures (``measured_*``) and the
    meta-batch's (``seconds``, ``peak_rss_mb``, ``peak_growth_mb``, on a GPU
    ``peak_device_mb``), extrapolated when the scale runs fewer tasks than its meta-batch."""
    factor = scale.meta_batch / scale.measured_tasks
    meta: dict[str, Any] = {}
    for method in methods:
        log(f"meta-iteration {method} ...")
        r = common.run_case("meta_iteration", scale, method)
        entry = {"measured_tasks": scale.measured_tasks,
                 "measured_seconds": r["seconds"],
                 "measured_peak_rss_mb": r["peak_rss_mb"],
                 "measured_peak_growth_mb": r["peak_growth_mb"],
                 "seconds": r["seconds"] * factor, "extrapolated": scale.extrapolated}
        buffer_mb = 0.0
        if method.startswith("warp") and scale.extrapolated:
            # the offline buffer keeps (K + 1) parameter vectors per task, in memory
            points = (scale.meta_batch - scale.measured_tasks) * (scale.steps + 1)
            value_bytes = {"memory": 4, "float16": 2, "disk": 0}[scale.buffer]
            buffer_mb = points * r["num_params"] * value_bytes / MB
        if "peak_device_mb" in r:  # on a GPU the buffer lives in device memory
            entry["peak_rss_mb"] = r["peak_rss_mb"]
            entry["peak_growth_mb"] = r["peak_growth_mb"]
            entry["peak_device_mb"] = r["peak_device_mb"] + buffer_mb
        else:
            entry["peak_rss_mb"] = r["peak_rss_mb"] + buffer_mb
            entry["peak_growth_mb"] = r["peak_growth_mb"] + buffer_mb
        if scale.extrapolated:
            entry["how"] = (
                f"ran {scale.measured_tasks} of {scale.meta_batch} tasks; seconds x "
                f"{factor:g} (every cost is per task); peak memory = measured"
                + (f" + {buffer_mb:.0f} MB for the other tasks' buffer points"
                   if buffer_mb else " (the buffer is on disk)" if method.startswith("warp")
                   else " (per-task memory is freed between tasks)"))
        meta[method] = entry
        log(f"  {entry['seconds']:.2f} s, peak {entry['peak_rss_mb']:.0f} MB")
    return meta


def one_task(scale: Scale, method: str, log: Callable[[str], None]) -> dict[str, float]:
    """Figures 6 and 7: one task's meta-iteration of ``method`` at ``scale``:
    ``task_seconds``, ``seconds`` (scaled to the meta-batch) and ``peak_rss_mb``."""
    r = common.run_case("meta_iteration", replace(scale, measured_tasks=1), method)
    log(f"  {r['seconds']:.2f} s per task")
    return {"task_seconds": r["seconds"], "seconds": r["seconds"] * scale.meta_batch,
            "peak_rss_mb": r["peak_rss_mb"]}
