"""The README's quick-start contract and its API example."""

import re
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
