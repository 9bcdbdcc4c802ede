"""Sine regression end to end: meta-learning must beat no meta-learning; runs resume exactly."""

import json

import pytest
import torch

from warpgrad.algorithms import METHODS
from warpgrad.experiments import sine
from warpgrad.experiments.sine import SineConfig


def test_every_method_beats_no_meta_learning_on_sine(tmp_path):
    """The main job's protocol and budget, every method, one seed. No meta-learning sits near
    E[A²]/2 ≈ 4; warped methods should be far below it, the rest clearly below."""
    methods = tuple(m for m in METHODS if m != "no-meta")
    config = SineConfig(methods=methods, eval_tasks=100, seed=0)
    results = sine.run(config, tmp_path, progress=False)["results"]
    none = results["no-meta"]["test_mse"]["mean"]
    mse = {m: results[m]["test_mse"]["mean"] for m in methods}
    for method in methods:
        bound = 0.25 if METHODS[method].needs_warps else 0.9
        assert mse[method] < bound * none, (method, mse[method], none)
    assert mse["warp-leap"] < 0.5 * mse["leap"]  # warping is what helps here


def _tiny(**kwargs):
    defaults = dict(methods=("warp-leap", "leap"), iterations=6, meta_batch=3, steps=3,
                    eval_tasks=5, checkpoint_every=2, points_per_update=4, seed=3)
    return SineConfig(**{**defaults, **kwargs})


def test_resume_after_a_kill_gives_the_same_result(tmp_path, monkeypatch):
    config = _tiny()
    straight = sine.run(config, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    real_step = sine.MetaLearner.meta_step

    def dying_step(self, tasks):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-run for the first method, after a checkpoint at 2
            raise KeyboardInterrupt
        return real_step(self, tasks)

    monkeypatch.setattr(sine.MetaLearner, "meta_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        sine.run(config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(sine.MetaLearner, "meta_step", real_step)
    saved = torch.load(tmp_path / "killed" / "checkpoint-warp-leap.pt", weights_only=False)
    assert saved["iteration"] == 2
    resumed = sine.run(config, tmp_path / "killed", progress=False)

    for method in ("no-meta", "warp-leap", "leap"):
        assert (resumed["results"][method]["test_mse"]
                == straight["results"][method]["test_mse"]), method
    rows = (tmp_path / "killed" / "metrics-warp-leap.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 7)]  # no repeats


def test_command_line_run_resume_and_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--no-progress", "--methods", "warp-leap", "--iterations", "2",
            "--meta-batch", "2", "--steps", "2", "--eval-tasks", "3"]
    assert sine.main(args) == 0
    printed = capsys.readouterr().out
    assert "warp-leap" in printed and "no-meta" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["iterations"] == 2 and config["methods"] == ["warp-leap"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"no-meta", "warp-leap"}

    for bad, message in (
        (args, "already exists"),
        (["--out", str(tmp_path / "x"), "--methods", "warp-sgd"], "unknown method"),
        (["--out", str(tmp_path / "y"), "--iterations", "0"], "iterations must be at least 1"),
        (["--resume", str(tmp_path / "nowhere")], "not a run directory"),
        (["--iterations", "many"], "invalid int value"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            sine.main(bad)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert sine.main(["--resume", str(out), "--no-progress"]) == 0  # a finished run resumes
