"""Run directories under divergence, concurrent use and a failing disk; the glyph cache
when damaged (issue 25). Kills: tests/test_kills.py; malformed input: tests/test_bad_input.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from warpgrad.cli import main
from warpgrad.data import load_glyphs
from warpgrad.data.glyphs import glyph_cache_path
from warpgrad.experiments import rundir
from warpgrad.experiments.sine import SineConfig, SineExperiment
from warpgrad.experiments.training import meta_train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SINE = ["sine", "-m", "warp-leap", "iterations=2", "checkpoint_every=1", "meta_batch=2",
             "eval_tasks=3", "steps=2", "test_shots=5", "hidden=[8]", "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def _warpgrad(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warpgrad", *map(str, args)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=300)


def _invoke(*args: object):
    warnings_format = warnings.formatwarning
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        warnings.formatwarning = warnings_format


@pytest.fixture
def finished(tmp_path) -> Path:
    out = tmp_path / "run"
    result = _invoke("train", *TINY_SINE, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# -- concurrent use ---------------------------------------------------------------------------

def test_a_second_process_on_a_run_directory_is_refused_until_the_first_ends(finished,
                                                                           tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from warpgrad.experiments.rundir import "
         f"open_existing; d = open_existing({str(finished)!r}); print('locked', flush=True); "
         "sys.stdin.read()"], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        summary = (finished / "summary.json").read_bytes()
        second = _warpgrad("train", "--resume", finished, "--no-progress", cwd=tmp_path)
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert f"in use by process {holder.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        evaluate = _warpgrad("evaluate", finished, "--no-progress", cwd=tmp_path)
        assert evaluate.returncode == 2 and "in use" in evaluate.stderr
        assert (finished / "summary.json").read_bytes() == summary
        assert not (finished / "evaluation.json").exists()
    finally:
        holder.communicate("")  # ends it: the kernel drops its lock
    # the .lock file stays behind, as after a kill; it does not block anyone
    assert (finished / rundir.LOCK).is_file()
    again = _warpgrad("train", "--resume", finished, "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_two_runs_started_at_once_on_one_out_one_is_refused(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "warpgrad", "train", *TINY_SINE, "--out",
                               "run"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    (ok, _), (refused, message) = outcomes
    assert (ok, refused) == (0, 2)
    assert message.count("\n") == 1 and message.startswith("error: run directory run")
    log = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert "resumes" not in log  # one run wrote it, once
    assert torch.load(tmp_path / "run" / "warp-leap" / "checkpoint.pt",
                      weights_only=False)["iteration"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_empty_folder_becomes_the_run_directory(tmp_path):
    """What a run killed between mkdir and config.json left, before creation was atomic."""
    (tmp_path / "run").mkdir()
    result = _invoke("train", *TINY_SINE, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["experiment"] == "sine"


def test_one_process_cannot_claim_a_directory_twice(finished):
    with rundir.open_existing(finished), pytest.raises(rundir.RunDirError, match="in use"):
        rundir.open_existing(finished)
    rundir.open_existing(finished).release()  # released on leaving the block


# -- divergence ------------------------------------------------------------------------------

def test_a_non_finite_checkpoint_is_never_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rundir.save_checkpoint(path, {"iteration": 1, "w": torch.ones(3)})
    with pytest.raises(FloatingPointError, match=r"meta-iteration 2.*w\.bias"):
        rundir.save_checkpoint(path, {"iteration": 2, "w": {"bias": torch.tensor([1.0,
                                                                              float("nan")])}})
    assert torch.load(path, weights_only=False)["iteration"] == 1
    with pytest.raises(FloatingPointError, match="elapsed"):
        rundir.save_checkpoint(path, {"iteration": 3, "elapsed": float("inf")})
    assert torch.load(path, weights_only=False)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_json_is_never_written_with_nan(tmp_path):
    path = tmp_path / "eval.json"
    with pytest.raises(FloatingPointError, match=r"test_loss\.mean"):
        rundir.write_json(path, {"test_loss": {"mean": float("nan"), "n": 3}})
    assert not path.exists()
    rundir.write_json(path, {"test_loss": {"mean": 0.5, "n": 3}})
    assert json.loads(path.read_text())["test_loss"]["mean"] == 0.5


def test_parameters_going_non_finite_under_finite_losses_stop_before_the_checkpoint(
        tmp_path):
    experiment = SineExperiment(SineConfig(methods=["warp-leap"], meta_batch=2, steps=2,
                                           hidden=[8], accelerate=False))
    learner = experiment.build_learner("warp-leap")
    step = learner.meta_step

    def blows_up_at_third(tasks):
        stats = step(tasks)
        if len(calls) == 2:
            with torch.no_grad():
                next(learner.model.parameters()).fill_(float("nan"))
        calls.append(stats)
        return stats  # finite: the losses were computed before the update

    calls: list = []
    learner.meta_step = blows_up_at_third
    with pytest.raises(FloatingPointError, match="meta-iteration 3"):
        meta_train(learner, experiment.sample_meta_batch, tmp_path, iterations=5,
                   checkpoint_every=1, seed=0, progress=False)
    assert all(np.isfinite(list(s.values())).all() for s in calls)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in state["learner"]["model"].values()
               if t.is_floating_point())


def test_non_finite_results_are_an_error_and_a_lower_rate_goes_on(tmp_path):
    """The issue's `sine -m leap inner_lr=0.17 iterations=1`: parameters go NaN at the first
    checkpoint; the run stops with one line saying how to go on, writes no NaN, and a
    resume with a lower inner_lr finishes it."""
    out = tmp_path / "run"
    first = _warpgrad("train", "sine", "-m", "leap", "inner_lr=0.17", "iterations=1",
                      "eval_tasks=5", "--no-progress", "--out", out, cwd=tmp_path)
    assert first.returncode == 1 and first.stderr.count("\n") == 1
    assert "non-finite" in first.stderr and f"--resume {out}" in first.stderr
    assert "Traceback" not in first.stderr
    assert not (out / "summary.json").exists() and not (out / "leap" / "checkpoint.pt").exists()
    resumed = _warpgrad("train", "--resume", out, "inner_lr=0.01", "--no-progress",
                        cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())  # valid JSON, finite numbers
    assert np.isfinite(summary["results"]["leap"]["test_loss"]["mean"])
    log = json.loads((out / "environment.json").read_text())
    assert log["resumes"][0]["config_changes"] == {"inner_lr": [0.17, 0.01]}
    assert json.loads((out / "config.json").read_text())["config"]["inner_lr"] == 0.01


def test_a_resume_applies_the_changed_learning_rates(finished):
    result = _invoke("train", "--resume", finished, "meta_lr=0.0005", "inner_lr=0.02",
                     "iterations=3", "--no-progress")
    assert result.exit_code == 0, result.output
    state = torch.load(finished / "warp-leap" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 3
    learner = state["learner"]
    for name in ("warp_optimizer", "init_optimizer"):
        assert [g["lr"] for g in learner[name]["param_groups"]] == [0.0005]
    assert torch.allclose(learner["inner_optimizer"]["lr"], torch.tensor(0.02))
    rows = (finished / "warp-leap" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["iteration", "1", "2", "3"]


def test_a_run_that_does_not_learn_is_warned_about(tmp_path):
    class Worsening:
        """A learner whose loss after adaptation only grows."""

        def __init__(self):
            self.losses = iter(range(1, 100))

        def meta_step(self, tasks):
            return {"adapt_loss_last": float(next(self.losses))}

        def state_dict(self):
            return {}

    with pytest.warns(UserWarning, match="no better than at meta-iteration 1"):
        meta_train(Worsening(), lambda g: [], tmp_path, iterations=10, checkpoint_every=5,
                   seed=0, progress=False)


def test_warnings_are_one_line_and_an_unused_data_root_is_one(tmp_path):
    result = _warpgrad("train", "sine", "--data-root", tmp_path, "--show-config", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr == f"warning: --data-root {tmp_path} is unused: experiment 'sine' " \
                            "uses generated data\n"
    with pytest.warns(UserWarning, match="unused: experiment 'glyphs-fewshot' uses embedded"):
        _invoke("train", "glyphs-fewshot", "--data-root", tmp_path, "--show-config")


# -- a failing disk ----------------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_old_one(tmp_path,
                                                                        monkeypatch):
    save = torch.save
    calls = []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(rundir.torch, "save", full_disk)
    out = tmp_path / "run"
    result = _invoke("train", *TINY_SINE, "--out", out)
    checkpoint = out / "warp-leap" / "checkpoint.pt"
    assert result.exit_code == 2
    assert result.stderr == (f"error: cannot write {checkpoint}: No space left on device; "
                             "its previous version is kept\n")
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=False)["iteration"] == 1
    assert not list(out.rglob("*.tmp"))


# -- the glyph cache -------------------------------------------------------------------------

def _damage_stream(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _rewrite(path: Path, **changes) -> None:
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


@pytest.mark.parametrize("damage", ["stream", "metadata", "shape", "labels"])
def test_a_damaged_glyph_cache_is_rebuilt_naming_the_file(damage, small_recipe, tmp_path):
    tiny = dataclasses.replace(small_recipe, blocks=("Hebrew",), instances=2)
    first = load_glyphs(tiny, cache_dir=tmp_path)
    path = glyph_cache_path(tiny, cache_dir=tmp_path)
    if damage == "stream":
        _damage_stream(path)
    elif damage == "metadata":
        _rewrite(path, info=np.array("{not json"))
    elif damage == "shape":
        _rewrite(path, images=first.images.numpy()[:, :, :5].astype(np.uint8))
    else:
        _rewrite(path, labels=np.full(len(first), 10_000))
    with pytest.warns(UserWarning, match=str(path)):
        again = load_glyphs(tiny, cache_dir=tmp_path)
    assert torch.equal(again.images, first.images) and again.meta["render_seconds"] > 0
    third = load_glyphs(tiny, cache_dir=tmp_path)  # the rebuilt cache reads back
    assert third.meta["render_seconds"] == 0 and torch.equal(third.images, first.images)
