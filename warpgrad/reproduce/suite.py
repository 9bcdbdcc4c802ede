"""Run claims as one suite and write the report.

Layout of ``OUT``::

    runs/<key>/seed<S>/   one normal run directory per run and seed (``warpgrad train``'s);
                          complete ones (with summary.json) are skipped, partial ones resume
    runs/cost/            the memory sweep of the cost claim
    timings.json          wall seconds of each run directory, as this suite ran it
    figures/*.png         the report's figures
    report.md             for each claim: the paper's number beside ours, the paired tests
                          and the verdict
    results.json          the same, machine-readable

The report covers every claim whose runs ``OUT`` holds, so the suite can be run in parts
(``warpgrad reproduce multishot``, then ``warpgrad reproduce maze`` ...).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from warpgrad.experiments import registry
from warpgrad.experiments.registry import ConfigError
from warpgrad.reproduce.claims import CLAIMS, SCALES, Claim, Judgement, Results, Run
from warpgrad.reproduce.stats import ALPHA, TEST_NAME

SCHEMA = 1


def select(names: Sequence[str]) -> list[Claim]:
    """The claims named (all when none), in the report's order."""
    unknown = [n for n in names if n not in CLAIMS]
    if unknown:
        raise ConfigError(f"unknown claim {unknown[0]!r}; expected one of {list(CLAIMS)}")
    return [c for name, c in CLAIMS.items() if not names or name in names]


def _resolve(run: Run, seed: int, data_root: str | None, device: str | None
             ) -> tuple[str, str, Any]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --data-root is unused by the embedded-data claims
        kind, config = registry.load_experiment(run.experiment, (*run.overrides, f"seed={seed}"),
                                                data_root=data_root, device=device)
    return registry.experiment_label(run.experiment), kind, config


def ensure_run(run: Run, seed: int, results: Results, *, data_root: str | None = None,
               device: str | None = None, progress: bool = True) -> float | None:
    """Make ``run``'s run directory for ``seed`` complete: skip it when it is (returns None),
    resume it when it is partial, start it otherwise. Returns the wall seconds spent.

    A run directory that holds another config is an error: its results would be judged as
    this claim's."""
    name, kind, config = _resolve(run, seed, data_root, device)
    path = results.run_dir(run.key, seed)
    wanted = json.loads(json.dumps(asdict(config)))
    if (path / "config.json").is_file():
        recorded = json.loads((path / "config.json").read_text()).get("config")
        if recorded != wanted:
            changed = sorted(k for k in wanted if recorded is None or recorded.get(k) != wanted[k])
            raise ConfigError(f"{path} holds a run with another config (differs in "
                              f"{', '.join(changed[:5]) or 'its keys'}); remove it or use "
                              "another --out")
        if (path / "summary.json").is_file():
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    registry.kinds()[kind].run(config, name, path, progress)
    return time.perf_counter() - start


def run_suite(claims: Sequence[Claim], *, seeds: int, scale: str, out: Path,
              data_root: str | None = None, device: str | None = None,
              progress: bool = True, log=print) -> dict[str, Any]:
    """Run every run of ``claims`` for seeds 0 … ``seeds`` - 1 at ``scale`` (skipping what
    ``out`` already holds), then judge every claim and write the report."""
    from warpgrad.experiments.rundir import write_json

    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out, range(seeds))
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for claim in claims:  # resolve every config first: a bad one fails before hours of work
        for run in claim.runs(scale):
            _resolve(run, 0, data_root, device)
    for claim in claims:
        for run in claim.runs(scale):
            for seed in results.seeds:
                log(f"[{claim.name}] {run.key} seed {seed}")
                seconds = ensure_run(run, seed, results, data_root=data_root, device=device,
                                     progress=progress)
                if seconds is not None:
                    timings[f"{run.key}/seed{seed}"] = round(seconds, 1)
                    write_json(timings_path, timings)
        if claim.extra is not None:
            log(f"[{claim.name}] measuring")
            start = time.perf_counter()
            claim.extra(scale, out, progress)
            timings.setdefault(f"{claim.name}/extra", round(time.perf_counter() - start, 1))
            write_json(timings_path, timings)
    return write_report(results, scale, timings)


def _claim_runs(claim: Claim, scale: str) -> list[str]:
    return [run.key for run in claim.runs(scale)]


def judge_all(results: Results, scale: str) -> dict[str, tuple[Claim, Judgement | None]]:
    """Every claim's judgement, or None where ``results`` holds none of its runs."""
    directory = results.out / "figures"
    directory.mkdir(parents=True, exist_ok=True)
    judged = {}
    for name, claim in CLAIMS.items():
        keys = _claim_runs(claim, scale)
        has_runs = any(results.done_seeds(k) for k in keys) or (claim.extra is not None and any(
            (results.out / "runs" / "cost").glob("*.json")))
        judged[name] = (claim, claim.judge(results, directory) if has_runs else None)
    return judged


def _minutes(timings: dict[str, float], keys: Sequence[str], claim: Claim) -> float:
    total = sum(v for k, v in timings.items() if k.split("/")[0] in keys)
    total += timings.get(f"{claim.name}/extra", 0.0)
    return total / 60.0


def _shared(timings: dict[str, float], claims: dict[str, tuple[Claim, Any]], scale: str
            ) -> float:
    keys = {k for claim, _ in claims.values() for k in _claim_runs(claim, scale)}
    return sum(v for k, v in timings.items()
               if k.split("/")[0] in keys or k.endswith("/extra")) / 60.0


def machine() -> dict[str, Any]:
    """The CPU, cores, threads and versions the figures came from."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from warpgrad import __version__

    return {"cpu": model, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "warpgrad": __version__, "date": time.strftime("%Y-%m-%d")}


def write_report(results: Results, scale: str, timings: dict[str, float]) -> dict[str, Any]:
    """Judge every claim and write ``report.md`` and ``results.json``; returns the latter's
    content."""
    from warpgrad.experiments.rundir import write_file, write_json

    judged = judge_all(results, scale)
    claims_json = {}
    for name, (claim, judgement) in judged.items():
        keys = _claim_runs(claim, scale)
        entry: dict[str, Any] = {"title": claim.title, "statement": claim.statement,
                                 "paper": claim.paper, "verdict": "not run",
                                 "seeds": max((len(results.done_seeds(k)) for k in keys),
                                              default=0),
                                 "minutes": round(_minutes(timings, keys, claim), 1)}
        if judgement is not None:
            entry.update(verdict=judgement.verdict, unit=judgement.unit, notes=judgement.notes,
                         rows=[{"label": r[0], "paper": r[1], "mean": r[2], "ci95": r[3],
                                "n": r[4]} for r in judgement.rows],
                         comparisons=[c.to_json() for c in judgement.comparisons],
                         figures=[os.path.relpath(f, results.out) for f in judgement.figures])
        claims_json[name] = entry
    report = {"schema": SCHEMA, "scale": scale, "seeds": len(results.seeds),
              "machine": machine(), "command": " ".join(["warpgrad", *sys.argv[1:]]),
              "minutes": round(_shared(timings, judged, scale), 1), "test": TEST_NAME,
              "alpha": ALPHA, "claims": claims_json}
    write_json(results.out / "results.json", report)
    text = markdown(report)
    write_file(results.out / "report.md", lambda f: f.write(text.encode()))
    return report


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 0.1 and value != 0 else f"{value:.2f}"


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """``report.md`` from ``results.json``'s content."""
    m = report["machine"]
    lines = [
        "# Reproducing the paper's claims", "",
        f"`{report['command']}`: scale `{report['scale']}`, {report['seeds']} seed(s), "
        f"{report['minutes']:.0f} minutes of runs, on {m['cpu']} ({m['cores']} cores, "
        f"{m['threads']} threads{', ' + m['gpu'] if m['gpu'] else ''}), PyTorch {m['torch']}, "
        f"warpgrad {m['warpgrad']}, {m['date']}.", "",
        f"Each comparison pairs two methods on the same units (test tasks of the same seeds, "
        f"or whole seeds; differences are oriented so that positive favours the first "
        f"method) and applies a {report['test']} at α = {report['alpha']}. "
        "**holds**: significant in the claimed direction; **does not hold**: significant "
        "against it, or its 95% CI excludes a gain as large as the comparison's margin; "
        "**inconclusive**: neither, at this budget.", "",
        "| # | claim | paper | verdict | seeds | minutes |", "|---|---|---|---|---|---|"]
    for i, (name, c) in enumerate(report["claims"].items(), 1):
        lines.append(f"| {i} | [{c['title']}](#{i}-{name}) | {c['paper']} | **{c['verdict']}** "
                     f"| {c['seeds']} | {c['minutes']:.1f} |")
    for i, (name, c) in enumerate(report["claims"].items(), 1):
        lines += ["", f"## {i}. {name}", "", f"**{c['title']}.** {c['statement']}", "",
                  f"Paper: {c['paper']}. Verdict: **{c['verdict']}**."]
        if c["verdict"] == "not run":
            lines += ["", f"Not run yet: `warpgrad reproduce {name}`."]
            continue
        if c["rows"]:
            lines += ["", f"| | paper | ours: {c['unit']} | n |", "|---|---|---|---|"]
            lines += [f"| {r['label']} | {r['paper']} | {_number(r['mean'])} ± "
                      f"{_number(r['ci95'])} | {r['n']} |" for r in c["rows"]]
        if c["comparisons"]:
            lines += ["", "| comparison | metric | mean difference (95% CI) | p | n (units) "
                      "| margin | verdict |", "|---|---|---|---|---|---|---|"]
            for x in c["comparisons"]:
                ci = ("no CI: one pair" if x["ci95"] is None else
                      f"{_number(x['ci95'][0])} to {_number(x['ci95'][1])}")
                lines.append(f"| {x['better']} vs {x['baseline']} | {x['metric']} | "
                             f"{_number(x['mean_difference'])} ({ci}) | {_p(x['p_value'])} | "
                             f"{x['n']} ({x['units']}) | {_number(x['margin'])} | "
                             f"{x['verdict']} |")
        lines += [""] + [f"- {note}" for note in c.get("notes", [])]
        lines += [f"![{name}]({f})" for f in c.get("figures", [])]
    return "\n".join(lines).rstrip() + "\n"
