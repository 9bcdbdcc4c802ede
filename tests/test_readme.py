"""The README's quick-start contract and its API example."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import warpgrad

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_readme_opens_with_install_and_test_commands_that_ci_runs():
    install, test = _blocks("bash")[:2]
    assert "pip install" in install and "warpgrad" in install
    ci = (README.parent / ".ci" / "run").read_text()
    assert test.strip() in ci  # CI runs exactly the README's test command


def test_readme_api_example_runs_and_meta_learns(capsys):
    example = _blocks("python")[0]
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "test_loss" in printed
    learner = namespace["learner"]
    baseline = warpgrad.make_learner("leap", warpgrad.mlp(warp=None), F.mse_loss, steps=5,
                                     inner_lr=0.01)
    tasks = warpgrad.sine_tasks(50, torch.Generator().manual_seed(123))
    meta = sum(learner.evaluate(t)["test_loss"] for t in tasks) / len(tasks)
    plain = sum(baseline.evaluate(t)["test_loss"] for t in tasks) / len(tasks)
    assert meta < 0.5 * plain, (meta, plain)


def test_readme_data_example_gives_the_promised_tasks():
    example = _blocks("python")[1]
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    episode, alphabet = namespace["episode"], namespace["alphabet"]
    assert episode.x_train.shape == (5, 1, 28, 28) and episode.x_test.shape == (75, 1, 28, 28)
    assert sorted(episode.y_train.tolist()) == [0, 1, 2, 3, 4]
    assert alphabet.x_train.shape == (300, 1, 28, 28)
    assert set(alphabet.y_train.tolist()) == set(range(20))


def _block_with(language, text):
    return next(b for b in _blocks(language) if text in b)


def _run_readme_command(line, cwd, extra):
    """One README command line, `warpgrad ...` run as `python -m warpgrad ...` on this
    checkout's code, globs expanded in ``cwd``, ``extra`` appended to `train`."""
    words = []
    for word in shlex.split(line):
        words += sorted(str(p.relative_to(cwd)) for p in cwd.glob(word)) if "*" in word else [word]
    assert words[0] == "warpgrad"
    if words[1] == "train":
        words += extra
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    return subprocess.run([sys.executable, "-m", *words], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


TINY = ["iterations=2", "steps=1", "eval_steps=1", "meta_batch=2", "eval_tasks=3",
        "methods=[warp-leap,leap]", "batched=false", "n_way=2", "k_query=2", "--no-progress"]


def test_readme_folder_dataset_command_and_own_model_experiment_file_run(tmp_path):
    from tests.conftest import write_image_folder

    write_image_folder(tmp_path / "my-images", groups=0, classes=10, images=3)
    folder_command = _block_with("bash", "dataset=folder").strip()
    result = _run_readme_command(folder_command, tmp_path, [*TINY, "--out", "folder-run"])
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "folder-run" / "summary.json").read_text())
    assert summary["experiment"] == "glyphs-fewshot" and summary["chance"] == 0.5
    classes = json.loads((tmp_path / "folder-run" / "data.json").read_text())["classes"]
    assert len(classes["train"]) == 6 and classes["test"][0].startswith("class0-")

    experiment = _block_with("yaml", "model: my_models:build")
    (tmp_path / "my-experiment.yaml").write_text(experiment)
    (tmp_path / "my_models.py").write_text(_block_with("python", "def build("))
    train, evaluate = _block_with("bash", "my-experiment.yaml").strip().split(" && ")
    trained = _run_readme_command(train, tmp_path, [*TINY, "val_every=1", "val_tasks=3"])
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("my-experiment-")
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["model"] == "my_models:build" and config["val_every"] == 1
    assert config["dataset"] == "folder" and config["k_shot"] == 1  # extended glyphs-fewshot
    result = _run_readme_command(evaluate, tmp_path, [])
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((run_dir / "evaluation-best.json").read_text())
    assert {r["checkpoint"] for r in evaluation["results"].values()} == {"best"}
