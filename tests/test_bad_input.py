"""Malformed invocations and inputs: each ends in one line ``error: ...`` on stderr, exit
status 2, no traceback, and the file tree exactly as it was (issue 25).

The cases run through the command in-process (click's runner: the same ``main``, a few
milliseconds each); ``test_real_subprocess_gives_one_line`` runs a sample of them as real
processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from warpgrad.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SINE = ["sine", "-m", "warp-leap", "iterations=2", "checkpoint_every=1", "meta_batch=2",
             "eval_tasks=3", "steps=2", "test_shots=5", "hidden=[8]", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny sine run, copied by the cases that damage it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = CliRunner().invoke(main, ["train", *TINY_SINE, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _write(path: Path, data: bytes | str) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _run(tmp: Path, finished: Path) -> Path:
    copy = tmp / "run"
    shutil.copytree(finished, copy)
    return copy


def _config(run: Path, **changes) -> None:
    record = json.loads((run / "config.json").read_text())
    record["config"].update(changes)
    _write(run / "config.json", json.dumps(record))


def _checkpoint(run: Path) -> Path:
    return run / "warp-leap" / "checkpoint.pt"


def _truncated(run: Path) -> None:
    data = _checkpoint(run).read_bytes()
    _write(_checkpoint(run), data[: len(data) // 2])


def _new(tmp: Path, *args: str) -> list[str]:
    return ["train", *args, "--out", str(tmp / "new"), "--no-progress"]


def _sine(tmp: Path, *overrides: str) -> list[str]:
    return _new(tmp, *TINY_SINE[:-1], *overrides)


def _a_file(tmp: Path) -> Path:
    _write(tmp / "a-file", "not a folder\n")
    return tmp / "a-file"


# each case: (tmp, finished run) -> (argv, environment overrides, a phrase of the message)
CASES = {
    # config values outside their domain, caught before a run directory exists
    "negative inner_lr": lambda t, f: (_sine(t, "inner_lr=-0.1"), {}, "inner_lr"),
    "negative meta_lr": lambda t, f: (_sine(t, "meta_lr=-1"), {}, "meta_lr"),
    "nan learning rate": lambda t, f: (_sine(t, "inner_lr=nan"), {}, "finite"),
    "unknown meta_optimizer": lambda t, f: (_sine(t, "meta_optimizer=rmsprop"), {}, "adam"),
    "unknown warp_variant": lambda t, f: (_sine(t, "warp_variant=bogus"), {}, "first-order"),
    "unknown warp_regime": lambda t, f: (_sine(t, "warp_regime=sometimes"), {}, "online"),
    "device not a device": lambda t, f: ([*_sine(t), "--device", "gpu"], {}, "cuda:N"),
    "device with a bad index": lambda t, f: ([*_sine(t), "--device", "cuda:x"], {}, "cuda:N"),
    "empty hidden, warped method": lambda t, f: (_sine(t, "hidden=[]"), {}, "hidden"),
    "hidden not a list": lambda t, f: (_sine(t, "hidden=abc"), {}, "hidden=[40,40]"),
    "methods not a list": lambda t, f: (_new(t, "sine", "methods=leap"), {}, "--method"),
    "iterations not a number": lambda t, f: (_sine(t, "iterations=abc"), {}, "whole number"),
    "iterations zero": lambda t, f: (_sine(t, "iterations=0"), {}, "at least 1"),
    "bool not a bool": lambda t, f: (_new(t, "glyphs-fewshot", "augment=maybe"), {}, "true"),
    "misspelt key": lambda t, f: (_sine(t, "iteration=5"), {}, "did you mean 'iterations'"),
    "override not key=value": lambda t, f: (_sine(t, "steps"), {}, "key=value"),
    "unknown experiment": lambda t, f: (_new(t, "nosuch"), {}, "available"),
    "unknown method": lambda t, f: (_new(t, "sine", "-m", "nosuch"), {}, "expected any of"),
    "n_way=1": lambda t, f: (_new(t, "glyphs-fewshot", "n_way=1"), {}, "n_way"),
    "momentum 1.5": lambda t, f: (_new(t, "glyphs-multishot", "momentum=1.5"), {}, "momentum"),
    "point_fraction 0": lambda t, f: (_new(t, "glyphs-multishot", "point_fraction=0"), {},
                                      "point_fraction"),
    "negative seed": lambda t, f: (_sine(t, "seed=-1"), {}, "seed"),
    "continual method": lambda t, f: (_new(t, "continual-sine", "-m", "maml"), {}, "expected"),
    "continual x_range": lambda t, f: (_new(t, "continual-sine", "x_range=[1]"), {}, "x_range"),
    "maze even size": lambda t, f: (_new(t, "maze", "maze_size=4"), {}, "odd"),
    "maze on cuda": lambda t, f: (_new(t, "maze", "--device", "cuda"), {}, "CPU only"),
    # the disk: where runs go, data roots, caches
    "data root a file": lambda t, f: (_new(t, "omniglot-multishot", "--data-root",
                                           str(_a_file(t))), {}, "not a folder"),
    "data root missing": lambda t, f: (_new(t, "omniglot-multishot", "--data-root",
                                            str(t / "nope")), {}, "does not exist"),
    "data check, root a file": lambda t, f: (["data", "check", "omniglot-multishot",
                                              "--data-root", str(_a_file(t))], {},
                                             "not a folder"),
    "out under a file": lambda t, f: (["train", *TINY_SINE, "--out",
                                       str(_a_file(t) / "run")], {}, "not a folder"),
    "out exists": lambda t, f: (["train", *TINY_SINE, "--out", str(_run(t, f))], {},
                                "already exists"),
    "cache is a file": lambda t, f: (_new(t, "glyphs-fewshot"),
                                     {"WARPGRAD_CACHE": str(_a_file(t))}, "not a folder"),
    "home is a file": lambda t, f: (_new(t, "glyphs-fewshot"),
                                    {"WARPGRAD_CACHE": None, "HOME": str(_a_file(t))},
                                    "WARPGRAD_CACHE"),
    # resuming: the run directory and its files
    "resume missing": lambda t, f: (["train", "--resume", str(t / "nope")], {}, "no config"),
    "resume empty folder": lambda t, f: ((t / "empty").mkdir() or
                                         ["train", "--resume", str(t / "empty")], {},
                                         "not a run directory"),
    "resume with an experiment": lambda t, f: (["train", "--resume", str(_run(t, f)), "sine"],
                                               {}, "--resume"),
    "resume changing a fixed key": lambda t, f: (["train", "--resume", str(_run(t, f)),
                                                  "steps=3"], {}, "can change only"),
    "resume with a bad value": lambda t, f: (["train", "--resume", str(_run(t, f)),
                                              "inner_lr=-1"], {}, "inner_lr"),
    "config.json a list": lambda t, f: (_write(_run(t, f) / "config.json", "[]") or
                                        ["train", "--resume", str(t / "run")], {},
                                        "not a warpgrad run config"),
    "config.json garbage": lambda t, f: (_write(_run(t, f) / "config.json", "{kind: ") or
                                         ["train", "--resume", str(t / "run")], {},
                                         "not a warpgrad run config"),
    "config.json empty": lambda t, f: (_write(_run(t, f) / "config.json", "") or
                                       ["train", "--resume", str(t / "run")], {},
                                       "not a warpgrad run config"),
    "config.json unknown kind": lambda t, f: (_write(_run(t, f) / "config.json",
                                                     '{"kind": "x", "config": {}, '
                                                     '"experiment": "x"}') or
                                              ["train", "--resume", str(t / "run")], {},
                                              "not a warpgrad run config"),
    "config.json bad value": lambda t, f: (_config(_run(t, f), steps="many") or
                                           ["train", "--resume", str(t / "run")], {}, "steps"),
    "checkpoint garbage": lambda t, f: (_write(_checkpoint(_run(t, f)), b"\x00garbage" * 9) or
                                        ["train", "--resume", str(t / "run")], {},
                                        "not a readable warpgrad checkpoint"),
    "checkpoint empty": lambda t, f: (_write(_checkpoint(_run(t, f)), b"") or
                                      ["train", "--resume", str(t / "run")], {},
                                      "not a readable warpgrad checkpoint"),
    "checkpoint truncated": lambda t, f: (_truncated(_run(t, f)) or
                                          ["train", "--resume", str(t / "run")], {},
                                          "not a readable warpgrad checkpoint"),
    "checkpoint of a list": lambda t, f: (torch.save([1, 2], _checkpoint(_run(t, f))) or
                                          ["train", "--resume", str(t / "run")], {},
                                          "not a warpgrad checkpoint"),
    "checkpoint of a foreign dict": lambda t, f: (torch.save({"x": 1}, _checkpoint(_run(t, f)))
                                                  or ["train", "--resume", str(t / "run")],
                                                  {}, "does not fit this run"),
    "checkpoint of another model": lambda t, f: (_config(_run(t, f), hidden=[6]) or
                                                 ["train", "--resume", str(t / "run")], {},
                                                 "does not fit this run"),
    "evaluate missing": lambda t, f: (["evaluate", str(t / "nope")], {}, "no config"),
    "evaluate garbage checkpoint": lambda t, f: (_write(_checkpoint(_run(t, f)), b"junk") or
                                                 ["evaluate", str(t / "run"), "--no-progress"],
                                                 {}, "not a readable warpgrad checkpoint"),
    "evaluate another model": lambda t, f: (_config(_run(t, f), hidden=[6]) or
                                            ["evaluate", str(t / "run"), "--no-progress"], {},
                                            "does not fit this run"),
    # report
    "report truncated summary": lambda t, f: (_write(_run(t, f) / "summary.json",
                                                     (f / "summary.json").read_text()[:40])
                                              or ["report", str(t / "run")], {},
                                              "not valid JSON"),
    "report empty summary": lambda t, f: (_write(_run(t, f) / "summary.json", "") or
                                          ["report", str(t / "run")], {}, "not valid JSON"),
    "report summary of a list": lambda t, f: (_write(_run(t, f) / "summary.json", "[]") or
                                              ["report", str(t / "run")], {},
                                              "not a summary report compares"),
    "report without summary": lambda t, f: ((t / "empty").mkdir() or
                                            ["report", str(t / "empty")], {}, "no summary"),
}

if not torch.cuda.is_available():
    CASES["cuda unavailable"] = lambda t, f: ([*_sine(t), "--device", "cuda"], {}, "CUDA")

if os.geteuid() != 0:  # permissions bind everyone but root
    def _read_only(tmp: Path, finished: Path) -> Path:
        run = _run(tmp, finished)
        for path in (run, run / "warp-leap"):
            path.chmod(0o555)
        return run

    CASES.update({
        "resume read-only": lambda t, f: (["train", "--resume", str(_read_only(t, f))], {},
                                          "read-only"),
        "evaluate read-only": lambda t, f: (["evaluate", str(_read_only(t, f))], {},
                                            "read-only"),
        "out in a read-only folder": lambda t, f: (
            (t / "ro").mkdir() or (t / "ro").chmod(0o555) or
            ["train", *TINY_SINE, "--out", str(t / "ro" / "run")], {}, "read-only"),
        "unreadable checkpoint": lambda t, f: (
            _checkpoint(_run(t, f)).chmod(0) or ["train", "--resume", str(t / "run")], {},
            "cannot read"),
    })


def _tree(root: Path) -> dict[str, tuple[int, str] | str]:
    """Every path under ``root`` with its mode and content hash (a lock file: only that it
    exists; whoever takes the lock writes its process id there)."""
    tree: dict[str, tuple[int, str] | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir() or path.name == ".lock":
            tree[key] = "folder" if path.is_dir() else "lock"
        else:
            mode = path.stat().st_mode
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if mode & 0o400 else ""
            tree[key] = (mode, digest)
    return tree


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(case, tmp_path, finished,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run directory would land here
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path.parent / "mpl"))
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets it
    args, env, phrase = CASES[case](tmp_path, finished)
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    before = _tree(tmp_path)
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exception, result.stderr)
    assert isinstance(result.exception, SystemExit)  # not an escaped exception
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == before


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", ["hidden not a list", "checkpoint truncated",
                                  "config.json a list", "report truncated summary"])
def test_real_subprocess_gives_one_line(case, tmp_path, finished):
    args, _, phrase = CASES[case](tmp_path, finished)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    before = _tree(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "warpgrad", *map(str, args)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert phrase in proc.stderr and "Traceback" not in proc.stderr
    assert _tree(tmp_path) == before
