"""The suite's output: the table's rows, the markdown (machine, protocol, table, notes,
targets) and the files ``bench.json`` and ``bench.md``.

Everything here reads only the results dict, so a ``bench.json`` from another run (e.g. one
that came back from a GPU machine) renders the same way: ``markdown(json.load(f))``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from warpgrad.bench.common import INNER_LR, N_WAY

Row = tuple[str, str, str, str]


def rows(results: dict[str, Any]) -> list[Row]:
    """The table's rows: (figure, case, value, unit), figure by figure."""
    out: list[Row] = []
    for method, r in results.get("meta_iteration", {}).items():
        mark = " *" if r["extrapolated"] else ""
        out.append(("meta-iteration", method, f"{r['seconds']:.2f}{mark}", "s"))
        out.append(("meta-iteration peak RSS", method, f"{r['peak_rss_mb']:.0f}{mark}", "MB"))
        out.append(("meta-iteration peak growth", method, f"{r['peak_growth_mb']:.0f}{mark}",
                    "MB"))
        if "peak_device_mb" in r:
            out.append(("meta-iteration peak GPU memory", method,
                        f"{r['peak_device_mb']:.0f}{mark}", "MB"))
    for variant, r in results.get("overhead", {}).items():
        case = f"warp-leap-{variant} ({r['tasks']} task(s))"
        out.append(("bare compute", case, f"{r['bare_seconds']:.2f}", "s"))
        out.append(("overhead ratio", case, f"{r['ratio']:.3f}", "x"))
    out += _memory_rows(results.get("memory_vs_steps", {}).get("cases", {}))
    for name, entry in results.get("protocols", {}).items():
        for method, r in entry["methods"].items():
            out.append((f"protocol {name}", method, f"{r['seconds']:.3f}", "s"))
        for variant, r in entry.get("overhead", {}).items():
            out.append((f"protocol {name}", f"overhead ratio ({variant})", f"{r['ratio']:.3f}",
                        "x"))
        for method, r in entry.get("operators", {}).items():
            out.append((f"protocol {name}", f"inside the operators ({method})",
                        f"{r['seconds']:.3f}", "s"))
            out.append((f"protocol {name}", f"inside the convolutions ({method})",
                        f"{r['convolution_seconds']:.3f}", "s"))
        if "ratio" in entry:
            out.append((f"protocol {name}", "warp-maml / maml", f"{entry['ratio']:.2f}", "x"))
    if "warped_step" in results:
        r = results["warped_step"]
        out.append(("adaptation step", "warped", f"{r['warped_ms']:.2f}", "ms"))
        out.append(("adaptation step", "plain", f"{r['plain_ms']:.2f}", "ms"))
        out.append(("adaptation step", "warped / plain", f"{r['ratio']:.3f}", "x"))
    for variant, modes in results.get("training", {}).items():
        for mode, r in modes.items():
            case = f"warp-leap-{variant}, {mode}"
            out.append(("whole meta-batch", case, f"{r['seconds']:.2f}", "s"))
            key = "peak_device_mb" if "peak_device_mb" in r else "peak_rss_mb"
            out.append(("whole meta-batch peak " + ("GPU memory" if key == "peak_device_mb"
                                                     else "RSS"), case, f"{r[key]:.0f}", "MB"))
    for method, by_world in results.get("scale_out", {}).items():
        for world, r in by_world.items():
            case = f"{method}, {world} process(es)"
            out.append(("scale-out throughput", case, f"{r['meta_iterations_per_second']:.3f}",
                        "it/s"))
            out.append(("scale-out collectives per meta-iteration", case,
                        f"{r['communication_seconds_per_iteration'] * 1e3:.1f}", "ms"))
            if "speedup_over_1" in r:
                out.append(("scale-out speed-up", case, f"{r['speedup_over_1']:.2f}", "x"))
    for variant, rungs in results.get("switches", {}).items():
        for rung in rungs:
            case = f"warp-leap-{variant}: {rung['label']}"
            out.append(("switches", case, f"{rung['seconds']:.1f} *", "s"))
            out.append(("switches speed-up", case, f"{rung['speedup']:.2f}", "x"))
    for variant, r in results.get("online", {}).items():
        for mode in ("online", "online-shared"):
            out.append(("online objective", f"warp-leap-{variant}, {mode}",
                        f"{r[mode]['seconds']:.1f} *", "s"))
        out.append(("online objective", f"warp-leap-{variant}, shared-step speed-up",
                    f"{r['speedup']:.2f}", "x"))
    for mode, r in results.get("host_ops", {}).items():
        out.append(("host operators per step or point", mode, f"{r['per_step_or_point']:.1f}",
                    "ops"))
        out.append(("scalar reads per meta-iteration", mode, f"{r['scalar_reads']:d}",
                    "reads"))
    for method, r in results.get("convolutions", {}).items():
        out.append(("convolutions alone", method, f"{r['seconds']:.2f} *", "s"))
        out.append(("convolutions alone", f"{method}: work", f"{r['gflop']:.1f} *", "GFLOP"))
        out.append(("convolutions alone", f"{method}: throughput", f"{r['gflop_per_s']:.0f}",
                    "GFLOP/s"))
        if "ratio" in r:
            out.append(("meta-iteration / convolutions alone", method, f"{r['ratio']:.3f}",
                        "x"))
    for variant, r in results.get("batched_objective", {}).items():
        n = r["points"]
        out.append(("objective per point", f"{variant} one at a time",
                    f"{r['sequential_ms_per_point']:.2f}", "ms"))
        out.append(("objective per point", f"{variant} batched ({n})",
                    f"{r['batched_ms_per_point']:.2f}", "ms"))
        out.append(("objective per point", f"{variant} batched / one at a time",
                    f"{r['ratio']:.3f}", "x"))
    return out


def _memory_rows(sweep: dict[str, Any]) -> list[Row]:
    """Figure 3's rows: every measure recorded, per method and K."""
    measures = (("peak_growth_mb", "peak growth vs K"), ("peak_device_mb", "peak GPU memory vs K"),
                ("saved_tensor_mb", "autograd saved tensors vs K"),
                ("live_peak_mb", "live tensors' peak growth vs K"))
    out: list[Row] = []
    for method, by_k in sweep.items():
        for k, r in by_k.items():
            out += [(figure, f"{method} K={k}", f"{r[key]:.1f}", "MB")
                    for key, figure in measures if key in r]
    return out


def _switches_line(s: dict[str, Any]) -> str:
    """The run's switches in words (a ``bench.json`` of schema 1 has no ``reference``)."""
    def on(key: str) -> str:
        return "on" if s.get(key, False) else "off"

    core = ("the reference core" if s.get("reference", False)
            else "the accelerator (warpgrad.accel.convert)")
    return (f"Switches: {core}, precision {s.get('precision', 'fp32')}, buffer "
            f"{s.get('buffer', 'memory')}, malloc "
            f"{'tuned' if s.get('tune_malloc', True) else 'default'}, CUDA graphs "
            f"{on('cuda_graphs')}, cuDNN benchmark {on('cudnn_benchmark')}.")


def _notes(results: dict[str, Any]) -> list[str]:
    """The lines under the table: how starred figures were extrapolated or measured."""
    lines: list[str] = []
    notes: dict[str, list[str]] = {}
    for method, r in results.get("meta_iteration", {}).items():
        if "how" in r:
            notes.setdefault(r["how"], []).append(method)
    if notes:
        lines += [""] + [f"- \\* extrapolated ({', '.join(methods)}): {how}."
                         for how, methods in notes.items()]
    if "memory_vs_steps" in results:
        lines += ["", f"Peak memory vs K: {results['memory_vs_steps']['note']}."]
    if "switches" in results:
        lines += ["", "Switches (\\*): one task measured per rung, seconds x the meta-batch; "
                  "speed-up over the first rung, measured in the same run."]
    if "online" in results:
        lines += ["", "Online objective (\\*): one task measured per case, seconds x the "
                  "meta-batch."]
    if "convolutions" in results:
        lines += ["", "Convolutions alone (\\*): every convolution call of the meta-iteration "
                  "(forward, input and weight gradients; recorded at K = 1 and 2, counted for "
                  "K steps and the whole meta-batch) replayed alone on fresh tensors of the "
                  "same layout: the arithmetic floor of the time targets on this machine."]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown: machine, protocol and switches, table, notes and targets."""
    m, s = results["machine"], results["scale"]
    gpu = f" GPU: {m['gpu']} (the cases run there)." if m.get("gpu") else ""
    lines = [f"## warpgrad bench --scale {s['name']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"{m['threads']} threads, Python {m['python']}.{gpu}", "",
             f"Protocol: Conv4-{s['filters']} with 3x3 conv warps, {N_WAY}-way glyph alphabet "
             f"tasks, batch {s['batch_size']}, K={s['steps']} SGD steps at lr {INNER_LR}, "
             f"meta-batch {s['meta_batch']}, offline WarpGrad one point per update. "
             + _switches_line(s), "",
             "| figure | case | value | unit |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    lines += _notes(results)
    if results.get("targets"):
        lines += ["", "| target | value | limit | met |", "|---|---|---|---|"]
        for t in results["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:.3f}"
            met = {True: "yes", False: "no", None: "n/a (not judged here)"}[t["met"]]
            lines.append(f"| {t['target']} | {value} | {t['limit']} | {met} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out`` (created); returns their paths."""
    from warpgrad._files import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # not the run directories' writer: a ratio over a zero baseline is infinite here
    text = json.dumps(results, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(out / "bench.json", lambda f: f.write(text.encode()))
    (out / "bench.md").write_text(markdown(results))
    return out / "bench.json", out / "bench.md"
