"""SIGKILL a real training process at chosen and random moments, then go on as a user would
(``warpgrad train --resume``, or the same command again when no run directory exists yet):
the run ends with the same metrics and metrics rows as an uninterrupted one, and with no
temporary file left anywhere (issue 25).

The chosen moments are the run directory's writes, through the writer's private test hook
``WARPGRAD_FAULT_AFTER=NAME[:N]`` (warpgrad/experiments/rundir.py), which kills the process
itself right after the N-th write called NAME (``NAME.tmp``: inside it, before the rename).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# warp-leap, 3 meta-iterations, a checkpoint at 2 and at the end (3): a kill after the first
# redoes iteration 3 on resume, a kill after the last must not lose its metrics rows
COMMAND = ["train", "sine", "-m", "warp-leap", "iterations=3", "checkpoint_every=2",
           "meta_batch=2", "eval_tasks=3", "steps=2", "test_shots=5", "hidden=[8]",
           "--no-progress", "--threads", "1"]
MOMENTS = ["rundir", "config", "environment", "data", "checkpoint:1", "checkpoint.tmp:1",
           "metrics:1", "metrics.tmp:1", "checkpoint:2", "metrics:2", "eval", "summary",
           "plot:1", "plot:2"]
FILES = 9  # config, environment, data, checkpoint, metrics, eval, summary, two plots
HOOK_CALLS = 1 + 2 * 11  # the made folder; each of 11 writes inside and after (``*``)
RANDOM_WRITES = random.Random(25).sample(range(1, HOOK_CALLS + 1), 3)
RANDOM_DELAYS = [round(random.Random(250 + i).uniform(0.5, 4.0), 2) for i in range(2)]


def _warpgrad(args: list[str], cwd: Path, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MPLCONFIGDIR": str(cwd / ".mpl")}
    env.pop("WARPGRAD_FAULT_AFTER", None)
    if fault is not None:
        env["WARPGRAD_FAULT_AFTER"] = fault
    return subprocess.Popen([sys.executable, "-m", "warpgrad", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _outcome(run: Path) -> dict:
    """What must not depend on kills: every metric but wall time, and the metrics rows."""
    summary = json.loads((run / "summary.json").read_text())
    for result in summary["results"].values():
        result.pop("meta_train_seconds")
    evaluated = json.loads((run / "warp-leap" / "eval.json").read_text())
    evaluated.pop("meta_train_seconds")
    return {"summary": summary, "eval": evaluated,
            "metrics": (run / "warp-leap" / "metrics.csv").read_text(),
            "plots": sorted(p.name for p in run.glob("*.png"))}


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("reference")
    code, err = _finish(_warpgrad([*COMMAND, "--out", "run"], cwd))
    assert code == 0, err
    files = [p for p in (cwd / "run").rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(files) == FILES
    return _outcome(cwd / "run")


def _go_on(cwd: Path) -> bool:
    """After a kill: resume the run directory, or run the command again if there is none.
    Returns whether it resumed."""
    resumed = (cwd / "run").exists()
    args = ["train", "--resume", "run", "--no-progress"] if resumed else [*COMMAND, "--out",
                                                                          "run"]
    code, err = _finish(_warpgrad(args, cwd))
    assert code == 0, err
    return resumed


def _kill_after_write(moment: str, cwd: Path) -> bool:
    code, err = _finish(_warpgrad([*COMMAND, "--out", "run"], cwd, fault=moment))
    assert code == -signal.SIGKILL, f"the hook did not fire: {err}"
    return _go_on(cwd)


def _kill_after(delay: float, cwd: Path) -> bool:
    proc = _warpgrad([*COMMAND, "--out", "run"], cwd)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)  # by PID, whatever it is doing (or after it ended)
    _finish(proc)
    return _go_on(cwd)


def _survives(kill, when, cwd: Path, reference: dict) -> str:
    """``"ok"``, or what went wrong after ``kill(when, cwd)`` and going on."""
    try:
        resumed = kill(when, cwd)
        if _outcome(cwd / "run") != reference:
            return "different outcome"
        if _temporaries(cwd):
            return f"temporaries left: {_temporaries(cwd)}"
        log = json.loads((cwd / "run" / "environment.json").read_text())
        if "--out" not in log["argv"] or len(log.get("resumes", [])) != int(resumed):
            return "environment.json lost the first run or a resume"
    except (AssertionError, OSError, ValueError, KeyError) as error:
        return f"{type(error).__name__}: {error}"
    return "ok"


def test_runs_killed_at_every_moment_resume_to_the_same_run(reference, tmp_path):
    """14 chosen moments, 3 random writes, 2 random times; two at once (each its own
    folder), as the processes are mostly start-up."""
    kills = [(_kill_after_write, m) for m in MOMENTS + [f"*:{n}" for n in RANDOM_WRITES]]
    kills += [(_kill_after, d) for d in RANDOM_DELAYS]
    folders = [tmp_path / f"kill-{i}" for i in range(len(kills))]
    for folder in folders:
        folder.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda k, f: _survives(*k, f, reference), kills, folders))
    failed = {str(when): why for (_, when), why in zip(kills, outcomes) if why != "ok"}
    assert failed == {}
    assert len(outcomes) == len(MOMENTS) + len(RANDOM_WRITES) + len(RANDOM_DELAYS) == 19


OWN_LOOPS = {  # the experiments with their own run loops, tiny
    "maze": ["train", "maze", "episodes=4", "maze_size=5", "episode_length=10", "num_envs=2",
             "hidden_size=8", "random_episodes=2", "final_window=2", "checkpoint_every=2"],
    "continual-sine": ["train", "continual-sine", "-m", "warp-leap", "iterations=3",
                       "checkpoint_every=2", "meta_batch=2", "subtasks=2", "steps_per_subtask=2",
                       "eval_tasks=2", "plot_tasks=1", "hidden=[8]"],
}


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if not k.endswith("seconds")}
    return value


@pytest.mark.parametrize("experiment", sorted(OWN_LOOPS))
def test_own_run_loops_killed_resume_to_the_same_run(experiment, tmp_path):
    """Killed inside the last metrics write: after the last checkpoint, before metrics.csv
    has its rows, with a temporary file on disk."""
    moment = "metrics.tmp:2"
    command = [*OWN_LOOPS[experiment], "--no-progress", "--threads", "1"]
    (tmp_path / "reference").mkdir()
    (tmp_path / "killed").mkdir()
    code, err = _finish(_warpgrad([*command, "--out", "run"], tmp_path / "reference"))
    assert code == 0, err
    code, err = _finish(_warpgrad([*command, "--out", "run"], tmp_path / "killed", moment))
    assert code == -signal.SIGKILL, err
    code, err = _finish(_warpgrad(["train", "--resume", "run", "--no-progress"],
                                  tmp_path / "killed"))
    assert code == 0, err
    runs = [tmp_path / name / "run" for name in ("reference", "killed")]
    summaries = [_without_seconds(json.loads((r / "summary.json").read_text())) for r in runs]
    assert summaries[0] == summaries[1]
    rows = [(r / "metrics.csv").read_text() for r in runs]
    assert rows[0] == rows[1] and rows[0].count("\n") == 1 + (4 if experiment == "maze" else 3)
    assert _temporaries(tmp_path) == []
