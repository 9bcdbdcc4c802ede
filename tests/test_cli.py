"""The `warpgrad` command end to end, with tiny budgets, on glyphs and on fixture files in
the real datasets' formats."""

import json

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import mini_arrays, tiered_arrays, write_tiered
from warpgrad.algorithms import MetaLearner
from warpgrad.cli import main

TINY_MULTISHOT = ["iterations=2", "steps=2", "eval_steps=2", "batch_size=8", "meta_batch=2",
                  "filters=4", "checkpoint_every=1"]


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_default_main_job_runs_warp_leap_and_leap_on_glyph_alphabets(tmp_path):
    out = tmp_path / "main"
    result = invoke("train", "--out", out, "--no-progress", *TINY_MULTISHOT)
    assert result.exit_code == 0, result.output
    assert "warp-leap" in result.stdout and "leap" in result.stdout
    assert "test accuracy" in result.stdout
    summary = _summary(out)
    assert summary["experiment"] == "glyphs-multishot" and summary["schema"] == 1
    assert set(summary["results"]) == {"warp-leap", "leap"}
    for r in summary["results"].values():
        assert 0.0 <= r["test_accuracy"]["mean"] <= 1.0 and r["test_accuracy"]["n"] == 10
        assert r["iterations"] == 2
    record = json.loads((out / "config.json").read_text())
    assert record["experiment"] == "glyphs-multishot" and record["config"]["iterations"] == 2
    for name in ("environment.json", "data.json", "learning_curves.png", "results.png",
                 "warp-leap/checkpoint.pt", "warp-leap/metrics.csv", "leap/eval.json"):
        assert (out / name).is_file(), name
    alphabets = json.loads((out / "data.json").read_text())["alphabets"]
    assert len(alphabets["train"]) == 30 and len(alphabets["test"]) == 10
    assert not set(alphabets["train"]) & set(alphabets["test"])

    # evaluate and report read the run back
    evaluated = invoke("evaluate", out, "--no-progress")
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((out / "evaluation.json").read_text())
    for method in ("warp-leap", "leap"):
        assert again["results"][method]["test_accuracy"] == summary["results"][method][
            "test_accuracy"]
    plot = tmp_path / "report.png"
    reported = invoke("report", out, out, "--plot", plot)
    assert reported.exit_code == 0 and reported.stdout.count("warp-leap") == 2
    assert plot.is_file()


def test_resume_after_a_kill_gives_the_same_final_metrics(tmp_path, monkeypatch):
    args = ["train", "glyphs-multishot", "--no-progress", "iterations=4", "steps=2",
            "eval_steps=2", "batch_size=8", "meta_batch=2", "filters=4", "checkpoint_every=2"]
    straight = tmp_path / "straight"
    assert invoke(*args, "--out", straight).exit_code == 0

    real_step, calls = MetaLearner.meta_step, {"n": 0}

    def dying_step(self, tasks):
        calls["n"] += 1
        if calls["n"] == 3:  # after the checkpoint at iteration 2 of the first method
            raise KeyboardInterrupt
        return real_step(self, tasks)

    killed = tmp_path / "killed"
    monkeypatch.setattr(MetaLearner, "meta_step", dying_step)
    interrupted = invoke(*args, "--out", killed)  # click turns ^C into "Aborted!", status 1
    assert interrupted.exit_code == 1
    monkeypatch.setattr(MetaLearner, "meta_step", real_step)
    assert torch.load(killed / "warp-leap" / "checkpoint.pt", weights_only=False)[
        "iteration"] == 2
    assert not (killed / "summary.json").exists()
    resumed = invoke("train", "--resume", killed, "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    for method in ("warp-leap", "leap"):
        a, b = _summary(straight)["results"][method], _summary(killed)["results"][method]
        assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]
    rows = (killed / "warp-leap" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]  # nothing lost or repeated
    straight_rows = (straight / "warp-leap" / "metrics.csv").read_text().splitlines()[1:]
    assert rows == straight_rows


def test_glyph_few_shot_and_sine_experiments(tmp_path):
    out = tmp_path / "fewshot"
    result = invoke("train", "glyphs-fewshot", "--out", out, "--no-progress", "iterations=2",
                    "filters=4", "eval_tasks=5", "checkpoint_every=1", "meta_batch=2")
    assert result.exit_code == 0, result.output
    assert set(_summary(out)["results"]) == {"warp-maml", "maml"}
    assert _summary(out)["results"]["maml"]["test_accuracy"]["n"] == 5
    out = tmp_path / "sine"
    result = invoke("train", "sine", "-m", "warp-leap,no-meta", "--out", out, "--no-progress",
                    "iterations=2", "eval_tasks=3", "meta_batch=2")
    assert result.exit_code == 0, result.output
    assert _summary(out)["metric"] == "test_loss"
    assert set(_summary(out)["results"]) == {"warp-leap", "no-meta"}


def _fixture_roots(tmp_path, omniglot_folders):
    mini = tmp_path / "data" / "mini-imagenet"
    mini.mkdir(parents=True)
    import pickle

    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        images, class_dict = mini_arrays(seed=seed)
        with open(mini / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    tiered = tmp_path / "data" / "tiered-imagenet"
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        images, labels = tiered_arrays(per_class=4, seed=seed)
        write_tiered(tiered, images, labels, split)
    omniglot_folders.rename(tmp_path / "data" / "omniglot")
    return tmp_path / "data"


@pytest.mark.parametrize("experiment", ["omniglot-multishot", "mini-fewshot-1shot",
                                        "mini-fewshot-5shot", "tiered-fewshot-1shot",
                                        "tiered-fewshot-5shot", "tiered-multishot"])
def test_real_dataset_experiments_on_fixture_files(tmp_path, omniglot_folders, experiment):
    root = _fixture_roots(tmp_path, omniglot_folders)
    tiny = ["iterations=1", "filters=2", "steps=1", "eval_steps=1", "meta_batch=1",
            "n_way=2", "checkpoint_every=1"]
    if "fewshot" in experiment:
        tiny += ["k_shot=1", "k_query=1", "eval_tasks=2"]
    else:
        tiny += ["train_shots=2", "test_shots=1", "batch_size=2", "n_train_tasks=1",
                 "n_test_tasks=1", "-m", "warp-leap,no-meta"]
    check = invoke("data", "check", experiment, "--data-root", root)
    assert check.exit_code == 0 and "ok:" in check.stdout, check.output
    out = tmp_path / "run"
    result = invoke("train", experiment, "--data-root", root, "--out", out, "--no-progress",
                    *tiny)
    assert result.exit_code == 0, result.output
    summary = _summary(out)
    assert summary["experiment"] == experiment
    assert all(0.0 <= r["test_accuracy"]["mean"] <= 1.0 for r in summary["results"].values())


@pytest.mark.parametrize(("args", "message"), [
    (["train", "nonsense"],
     "unknown experiment 'nonsense'; available: continual-sine, geometry, glyphs-fewshot"),
    (["train", "-m", "warp-sgd"], "unknown method(s) ['warp-sgd']; expected any of"),
    (["train", "sine", "colour=red"], "unknown config key 'colour'; keys:"),
    (["train", "sine", "iterations=lots"],
     "config key 'iterations': got 'lots'; expected a whole number"),
    (["train", "sine", "iterations=0"], "iterations must be at least 1"),
    (["train", "sine", "iterations"], "is not key=value"),
    (["train", "omniglot-multishot", "--data-root", "/no/such/folder"],
     "data root '/no/such/folder' does not exist"),
    (["train", "--resume", "/no/such/run"], "is not a run directory"),
    (["train", "--device", "cuda"], "CUDA is not available"),
    (["train", "accelerate=false", "precision=bf16"], "precision=bf16 is a switch of the "
     "accelerator; it needs accelerate=true"),
    (["data", "check", "mini-fewshot-1shot", "--data-root", "/no/such/folder"],
     "does not exist"),
    (["evaluate", "/no/such/run"], "is not a run directory"),
    (["report", "/no/such/run"], "has no summary.json"),
])
def test_bad_input_is_one_line_and_exit_status_2(args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_existing_run_directory_is_never_overwritten(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = invoke("train", "sine", "--out", out)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert (out / "precious.txt").read_text() == "keep me"
    assert list(out.iterdir()) == [out / "precious.txt"]


def test_help_explains_commands_and_show_config_lists_every_field():
    assert "OVERRIDES" in invoke("train", "--help").stdout
    for command in ("evaluate", "report", "data"):
        assert invoke(command, "--help").exit_code == 0
    shown = invoke("train", "sine", "--show-config", "steps=7").stdout
    assert "kind: sine" in shown and "steps: 7" in shown and "inner_lr:" in shown
    assert "glyphs-multishot" in invoke("train", "--list").stdout


def test_continual_and_maze_experiments_through_the_command(tmp_path):
    out = tmp_path / "continual"
    result = invoke("train", "continual-sine", "-m", "leap", "--out", out, "--no-progress",
                    "iterations=2", "meta_batch=2", "subtasks=2", "steps_per_subtask=2",
                    "eval_tasks=3", "plot_tasks=1")
    assert result.exit_code == 0, result.output
    assert "whole-range MSE" in result.stdout
    assert set(_summary(out)["results"]) == {"leap", "no-meta"}
    assert json.loads((out / "config.json").read_text())["kind"] == "continual"
    out = tmp_path / "maze"
    result = invoke("train", "maze", "-m", "l2rl", "--out", out, "--no-progress", "episodes=3",
                    "maze_size=5", "episode_length=10", "num_envs=2", "hidden_size=8",
                    "random_episodes=2", "final_window=2")
    assert result.exit_code == 0, result.output
    assert "l2rl" in result.stdout and "random" in result.stdout
    resumed = invoke("train", "--resume", out, "--no-progress")  # a finished run resumes
    assert resumed.exit_code == 0, resumed.output
    bad = invoke("train", "maze", "-m", "warp,l2rl")
    assert bad.exit_code == 2 and "one method per run" in bad.stderr


def test_the_command_accelerates_by_default_and_accelerate_false_runs_the_reference(tmp_path):
    """The same tiny main job on the accelerator (the default) and on the reference core:
    both finish, and the accelerated run's learners were converted, the other's not."""
    from warpgrad.accel import AcceleratedBackend
    from warpgrad.engine.backend import Backend
    from warpgrad.experiments.classification import ClassificationExperiment
    from warpgrad.experiments.registry import load_run

    backends = {}
    for accelerate in ("true", "false"):
        out = tmp_path / accelerate
        result = invoke("train", "--out", out, "--no-progress", *TINY_MULTISHOT,
                        f"accelerate={accelerate}")
        assert result.exit_code == 0, result.output
        model = ClassificationExperiment(load_run(out)[2]).build_learner("warp-leap").model
        backends[accelerate] = type(model.backend)
    assert backends == {"true": AcceleratedBackend, "false": Backend}
    # the same first meta-iteration, up to float32 rounding in another summation order
    first = {a: (tmp_path / a / "warp-leap" / "metrics.csv").read_text().splitlines()[:2]
             for a in backends}
    assert first["true"][0] == first["false"][0]
    for a, b in zip(*(row[1].split(",") for row in first.values())):
        assert float(a) == pytest.approx(float(b), rel=1e-4)


def test_a_run_directory_of_the_previous_release_resumes(tmp_path):
    """Runs recorded before the speed switches ``channels_last``, ``compile`` and
    ``parallel_tasks`` were retired still resume and evaluate."""
    out = tmp_path / "old"
    args = ["train", "--out", out, "--no-progress", *TINY_MULTISHOT]
    assert invoke(*args).exit_code == 0
    record = json.loads((out / "config.json").read_text())
    del record["config"]["accelerate"]
    record["config"].update(channels_last=False, compile=False, parallel_tasks=False)
    (out / "config.json").write_text(json.dumps(record))
    resumed = invoke("train", "--resume", out, "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert invoke("evaluate", out, "--no-progress").exit_code == 0
