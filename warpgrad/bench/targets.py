"""The targets the suite's results are judged against, their limits read from
``targets.json`` beside this module (package data; its ``about`` fields say what each is).

:func:`check_targets` turns results into rows ``{"target", "value", "limit", "met"}``:
``met`` is ``True``/``False``, or ``None`` where the target is not judged (a speed or memory
target at another scale than the file's ``judged_scale``, a GPU goal on a CPU).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

TARGETS_FILE = Path(__file__).with_name("targets.json")

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Target:
    """One limit of ``targets.json``: ``value op limit`` is met; ``unit`` for its text."""

    op: str
    limit: float
    unit: str = ""

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)

    def text(self, suffix: str = "") -> str:
        """The limit as the table shows it: ``OP LIMIT UNIT``, then ``suffix``."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.op} {self.limit:g}{unit}{suffix}"


@cache
def load_targets(path: str | None = None) -> dict[str, Any]:
    """``targets.json`` (or the file at ``path``), parsed, its operators checked."""
    data = json.loads(Path(path or TARGETS_FILE).read_text())
    for name, spec in data["targets"].items():
        if spec["op"] not in _OPS:
            raise ValueError(f"{name}: unknown op {spec['op']!r}; expected one of {list(_OPS)}")
    return data


def _target(name: str, key: str | None = None) -> Target:
    spec = load_targets()["targets"][name]
    value = spec["value"] if key is None else spec["value"][key]
    return Target(spec["op"], float(value), spec.get("unit", ""))


def _judged(name: str, full: bool) -> bool:
    """Whether target ``name`` is judged at this run's scale."""
    return full or not load_targets()["targets"][name]["full_scale_only"]


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, each with the measured value and whether it is met (see the module
    docstring). Seconds are the meta-batch's; hours are for ``gpu_hours.iterations``
    meta-iterations."""
    spec = load_targets()
    full = results["scale"]["name"] == spec["judged_scale"]
    gpu = results["scale"].get("device", "cpu").startswith("cuda")
    cpu_seconds = spec["targets"]["cpu_seconds"]
    iterations = spec["targets"]["gpu_hours"]["iterations"]
    hours_target = _target("gpu_hours")
    per = f"{iterations:,} meta-iterations"
    targets = []

    def add(name: str, value: float | None, limit: str, met: bool | None) -> None:
        targets.append({"target": name, "value": value, "limit": limit, "met": met})

    def hours(seconds: float) -> float:
        return seconds * iterations / 3600

    overhead = _target("overhead_ratio")
    for variant, r in results.get("overhead", {}).items():
        add(f"overhead ratio ({variant})", r["ratio"], overhead.text(),
            overhead.met(r["ratio"]) if _judged("overhead_ratio", full) else None)
    meta = results.get("meta_iteration", {})
    judge_cpu = _judged("cpu_seconds", full)
    judge_gpu = _judged("gpu_hours", full)
    for method in cpu_seconds["value"]:
        seconds = _target("cpu_seconds", method)
        if method in meta and not gpu:  # the time targets are for the 2-core CPU
            s = meta[method]["seconds"]
            add(f"{method} meta-iteration seconds", s,
                seconds.text(f" (original {cpu_seconds['original_seconds']:g} s)"),
                seconds.met(s) if judge_cpu else None)
        floor = results.get("convolutions", {}).get(method)
        if floor is not None and not gpu:  # can the target be met at all on this machine?
            s = floor["seconds"]
            add(f"{method} convolutions alone, seconds (a floor under the meta-iteration)", s,
                seconds.text(", or the target is out of this machine's reach"),
                seconds.met(s) if judge_cpu else None)
        if floor is not None and gpu:
            h = hours(floor["seconds"])
            add(f"{method}: convolutions alone of {per}, hours (a floor)", h,
                hours_target.text(", or the goal is out of this GPU's reach"),
                hours_target.met(h) if judge_gpu else None)
        if method in meta and gpu:
            h = hours(meta[method]["seconds"])
            add(f"{method}: {per}, hours", h, hours_target.text(" on one GPU"),
                hours_target.met(h) if judge_gpu else None)
    for variant, modes in results.get("training", {}).items():
        for mode, r in modes.items():  # real meta-iterations: the goal's most direct measure
            h = hours(r["seconds"])
            add(f"warp-leap-{variant}, whole meta-batch, {mode}: {per}, hours", h,
                hours_target.text(" on one GPU" if gpu else " (a GPU goal)"),
                hours_target.met(h) if judge_gpu and gpu else None)
    peak = _target("peak_memory_mb")
    for method, r in meta.items():
        add(f"{method} peak memory MB", r["peak_rss_mb"], peak.text(),
            peak.met(r["peak_rss_mb"]) if _judged("peak_memory_mb", full) else None)
    for variant, rungs in ({} if gpu else results.get("switches", {})).items():
        seconds = _target("cpu_seconds", f"warp-leap-{variant}")
        rung = min(rungs, key=lambda r: r["seconds"])  # the fastest, measured in this run
        settings = ", ".join(f"{k}={v}" for k, v in rung["switches"].items())
        add(f"warp-leap-{variant} meta-iteration seconds, fastest switches ({settings})",
            rung["seconds"], seconds.text(), seconds.met(rung["seconds"]) if judge_cpu else None)
    targets += _memory_targets(results.get("memory_vs_steps", {}).get("cases", {}), gpu, full)
    targets += _protocol_targets(results.get("protocols", {}), gpu, full)
    return targets


def _protocol_targets(protocols: dict[str, Any], gpu: bool, full: bool
                      ) -> list[dict[str, Any]]:
    """Figure 12's: each protocol's overhead per warp method, the scaled multi-shot
    protocol's seconds per method and the time inside its operators (the floor under
    them), the few-shot ratio."""
    out = []
    overhead = _target("overhead_ratio")
    for name, entry in protocols.items():
        for label, r in entry.get("overhead", {}).items():
            out.append({"target": f"protocol {name} overhead ratio ({label})",
                        "value": r["ratio"], "limit": overhead.text(),
                        "met": overhead.met(r["ratio"]) if full else None})
    scaled = protocols.get("scaled-multishot", {})
    judge = _judged("protocol_seconds", full)
    for method in load_targets()["targets"]["protocol_seconds"]["value"]:
        limit = _target("protocol_seconds", method)
        r = scaled.get("methods", {}).get(method)
        if r is not None and not gpu:
            out.append({"target": f"scaled multi-shot {method} meta-iteration seconds",
                        "value": r["seconds"], "limit": limit.text(),
                        "met": limit.met(r["seconds"]) if judge else None})
        inside = scaled.get("operators", {}).get(method)
        if inside is not None and not gpu:  # can the target be met with these kernels?
            out.append({"target": f"scaled multi-shot {method}: inside the operators, "
                                  "seconds (a floor under the meta-iteration)",
                        "value": inside["seconds"],
                        "limit": limit.text(", or the target is out of this machine's reach"),
                        "met": limit.met(inside["seconds"]) if judge else None})
    if "ratio" in protocols.get("fewshot", {}):
        ratio, limit = protocols["fewshot"]["ratio"], _target("fewshot_ratio")
        out.append({"target": "few-shot Warp-MAML / MAML meta-iteration", "value": ratio,
                    "limit": limit.text(),
                    "met": limit.met(ratio) if _judged("fewshot_ratio", full) else None})
    return out


def _memory_targets(sweep: dict[str, Any], gpu: bool, full: bool) -> list[dict[str, Any]]:
    """Figure 3's: WarpGrad online's memory flat in K, MAML's growing, from the peak (GPU
    memory on a GPU, RSS growth on a CPU) and, where recorded, the live tensors' peak."""
    if not sweep:
        return []
    online_target, maml_target = _target("online_memory_ratio"), _target("maml_memory_ratio")
    judge_online = _judged("online_memory_ratio", full)
    judge_maml = _judged("maml_memory_ratio", full)
    ks = sorted(sweep["warpgrad-online"], key=int)
    lo, hi = ks[0], ks[-1]
    # on a GPU the activations live in device memory, not in the host's resident set
    key, what = ("peak_device_mb", "peak GPU memory") if gpu else ("peak_growth_mb",
                                                                   "peak growth")
    measures = [(key, what)]
    if "live_peak_mb" in sweep["warpgrad-online"][lo]:
        measures.append(("live_peak_mb", "live tensors' peak growth"))
    out = []
    for key, what in measures:
        online, maml = ([sweep[m][k][key] for k in (lo, hi)] for m in ("warpgrad-online", "maml"))
        ratio = online[1] / online[0] if online[0] > 0 else float("inf")
        out.append({"target": f"WarpGrad online {what} K={hi} / K={lo}", "value": ratio,
                    "limit": online_target.text(),
                    "met": online_target.met(ratio) if judge_online else None})
        # "grows": compared on the values, so that a zero at the smallest K still says so
        out.append({"target": f"MAML {what} K={hi} / K={lo}",
                    "value": maml[1] / maml[0] if maml[0] else None,
                    "limit": maml_target.text(" (grows)"),
                    "met": _grows(maml, maml_target) if judge_maml else None})
    return out


def _grows(values: list[float], target: Target) -> bool:
    lo, hi = values
    return target.met(hi / lo) if lo else hi > 0
