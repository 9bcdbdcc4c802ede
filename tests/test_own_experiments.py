"""Your own experiment through the command, end to end at tiny budgets: a folder of images
(with and without groups; multi-shot and few-shot), tensors and a torch Dataset with your own
model named in your own YAML file, validation with best.pt, and the command's rough edges."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tests.conftest import write_image_folder
from warpgrad.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["iterations=2", "steps=1", "eval_steps=1", "meta_batch=2", "filters=4",
        "checkpoint_every=1", "image_size=16"]
MULTISHOT = ["glyphs-multishot", "dataset=folder", "n_way=3", "train_shots=2", "test_shots=1",
             "batch_size=4", *TINY]
FEWSHOT = ["glyphs-fewshot", "dataset=folder", "methods=[warp-leap,leap]", "n_way=2",
           "k_shot=1", "k_query=2", "batched=false", *TINY]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def command(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m warpgrad ARGS`` in ``cwd``, on this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "warpgrad", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _json(path: Path):
    return json.loads(path.read_text())


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_folder_with_groups_multishot_validates_keeps_best_and_evaluates_either(tmp_path):
    write_image_folder(tmp_path / "images", groups=4, classes=3, images=3)
    out = tmp_path / "run"
    result = invoke("train", *MULTISHOT, "n_train_tasks=2", "n_test_tasks=1", "val_every=1",
                    "--data-root", tmp_path / "images", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    alphabets = _json(out / "data.json")["alphabets"]  # the groups are the tasks
    assert sorted(alphabets["train"] + alphabets["test"] + alphabets["val"]) == \
        ["g0", "g1", "g2", "g3"]
    assert len(alphabets["train"]) == 2 and len(alphabets["test"]) == 1
    for method in ("warp-leap", "leap"):
        rows = _metrics(out / method / "metrics.csv")
        scores = [float(r["val_accuracy"]) for r in rows]
        assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
        assert all(float(r["val_loss"]) > 0 for r in rows)
        best = torch.load(out / method / "best.pt", weights_only=False)
        assert best["iteration"] == 1 + scores.index(max(scores))  # ties keep the earlier
    summary = _json(out / "summary.json")
    assert {r["checkpoint"] for r in summary["results"].values()} == {"last"}
    assert summary["chance"] == pytest.approx(1 / 3)

    best = invoke("evaluate", out, "--checkpoint", "best", "--no-progress")
    assert best.exit_code == 0, best.output
    assert "evaluated the best checkpoints" in best.stdout
    evaluation = _json(out / "evaluation-best.json")
    for method, r in evaluation["results"].items():
        assert r["checkpoint"] == "best"
        assert r["iterations"] == torch.load(out / method / "best.pt",
                                             weights_only=False)["iteration"]
    assert not (out / "evaluation.json").exists()
    last = invoke("evaluate", out, "--no-progress")
    assert last.exit_code == 0
    assert _json(out / "evaluation.json")["results"]["leap"]["test_accuracy"] == \
        summary["results"]["leap"]["test_accuracy"]


def test_validation_changes_no_training_number_and_resumes_after_a_kill(tmp_path,
                                                                        monkeypatch):
    from warpgrad.algorithms import MetaLearner

    write_image_folder(tmp_path / "images", groups=4, classes=3, images=3)
    args = ["train", *MULTISHOT, "iterations=4", "n_train_tasks=2", "n_test_tasks=1", "-m",
            "warp-leap", "--data-root", tmp_path / "images", "--no-progress"]
    plain, validated, killed = tmp_path / "plain", tmp_path / "validated", tmp_path / "killed"
    assert invoke(*args, "--out", plain).exit_code == 0
    assert invoke(*args, "val_every=1", "--out", validated).exit_code == 0
    training = ("iteration", "adapt_loss_first", "adapt_loss_last", "warp_loss")
    plain_rows = _metrics(plain / "warp-leap" / "metrics.csv")
    validated_rows = _metrics(validated / "warp-leap" / "metrics.csv")
    assert [[r[k] for k in training] for r in plain_rows] == \
        [[r[k] for k in training] for r in validated_rows]
    assert _json(plain / "summary.json")["results"]["warp-leap"]["test_loss"] == \
        _json(validated / "summary.json")["results"]["warp-leap"]["test_loss"]

    real_step, calls = MetaLearner.meta_step, {"n": 0}

    def dying_step(self, tasks):
        calls["n"] += 1
        if calls["n"] == 3:  # after the checkpoint (and validation) of iteration 2
            raise KeyboardInterrupt
        return real_step(self, tasks)

    monkeypatch.setattr(MetaLearner, "meta_step", dying_step)
    assert invoke(*args, "val_every=1", "--out", killed).exit_code == 1
    monkeypatch.setattr(MetaLearner, "meta_step", real_step)
    resumed = invoke("train", "--resume", killed, "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert _metrics(killed / "warp-leap" / "metrics.csv") == validated_rows
    best = [torch.load(d / "warp-leap" / "best.pt", weights_only=False) for d in
            (validated, killed)]
    assert best[0]["iteration"] == best[1]["iteration"]
    for key, value in best[0]["learner"]["model"].items():
        assert torch.equal(value, best[1]["learner"]["model"][key]), key


def test_folder_without_groups_multishot_deals_seeded_random_groups(tmp_path):
    write_image_folder(tmp_path / "images", groups=0, classes=10, images=3)
    out = tmp_path / "run"
    result = invoke("train", *MULTISHOT, "n_train_tasks=2", "n_test_tasks=1", "-m", "leap",
                    "--data-root", tmp_path / "images", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    record = _json(out / "data.json")
    assert record["groups"] == "random groups of 3 classes (seed 0)"
    # 10 classes in groups of 3: three full groups (the fourth has one class: no task)
    assert sorted(record["alphabets"]["train"] + record["alphabets"]["test"] +
                  record["alphabets"]["val"]) == ["group-000", "group-001", "group-002"]


def test_folder_fewshot_splits_by_class_and_evaluate_tasks_writes_its_own_file(tmp_path):
    write_image_folder(tmp_path / "images", groups=0, classes=10, images=3)
    out = tmp_path / "run"
    result = invoke("train", *FEWSHOT, "eval_tasks=3", "--data-root", tmp_path / "images",
                    "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    classes = _json(out / "data.json")["classes"]
    assert [len(classes[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(classes["train"] + classes["val"] + classes["test"]) == \
        [f"class0-{c}" for c in range(10)]
    assert _json(out / "summary.json")["results"]["leap"]["test_accuracy"]["n"] == 3

    evaluated = invoke("evaluate", out, "--tasks", "5", "--no-progress")
    assert evaluated.exit_code == 0, evaluated.output
    assert "evaluation-tasks5.json" in evaluated.stdout
    assert _json(out / "evaluation-tasks5.json")["results"]["leap"]["test_accuracy"]["n"] == 5
    assert not (out / "evaluation.json").exists()  # the run's own evaluation is untouched
    before = (out / "evaluation-tasks5.json").read_text()
    again = invoke("evaluate", out, "--tasks", "5", "--no-progress")
    assert again.exit_code == 2
    assert again.stderr.strip() == f"error: {out / 'evaluation-tasks5.json'} exists; add " \
        "--force to replace it"
    assert (out / "evaluation-tasks5.json").read_text() == before
    forced = invoke("evaluate", out, "--tasks", "5", "--force", "--no-progress")
    assert forced.exit_code == 0
    no_best = invoke("evaluate", out, "--checkpoint", "best", "--no-progress")
    assert no_best.exit_code == 2 and "has no best.pt; the run did not validate" in \
        no_best.stderr

    sheet = invoke("data", "contact-sheet", tmp_path / "sheet.png", "dataset=folder",
                   "--experiment", "glyphs-fewshot", "--data-root", tmp_path / "images")
    assert sheet.exit_code == 0 and (tmp_path / "sheet.png").stat().st_size > 0


def test_folder_with_groups_fewshot_splits_its_classes(tmp_path):
    write_image_folder(tmp_path / "images", groups=2, classes=5, images=3)
    out = tmp_path / "run"
    result = invoke("train", *FEWSHOT, "-m", "leap,no-meta", "eval_tasks=2", "--data-root",
                    tmp_path / "images", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    classes = _json(out / "data.json")["classes"]
    assert sorted(classes["train"] + classes["val"] + classes["test"]) == \
        [f"g{g}/class{g}-{c}" for g in range(2) for c in range(5)]
    assert [len(classes[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    results = _json(out / "summary.json")["results"]
    assert results["leap"]["checkpoint"] == "last" and results["no-meta"]["checkpoint"] == \
        "none"


MODELS = '''
from torch import nn


def build(n_classes, input_shape, warps, hidden=8):
    layers = [nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)), hidden),
              nn.ReLU()]
    if warps:
        layers.append(nn.Linear(hidden, hidden))  # the warp: starts at the identity
    layers.append(nn.Linear(hidden, n_classes))
    return nn.Sequential(*layers), ["3"] if warps else []
'''

DATA = '''
import torch
from warpgrad.data import ClassDataset


class Signals(torch.utils.data.Dataset):
    """Float signals [2, 6]: class k is a constant k/10 plus seeded noise."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(60) % 12
        self.x = self.y[:, None, None] / 10 + 0.01 * torch.randn(60, 2, 6, generator=g)

    def __len__(self):
        return 60

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def signals():
    return ClassDataset.from_dataset(Signals(), name="signals")


def vectors():
    x = torch.randn(48, 5, generator=torch.Generator().manual_seed(1))
    return ClassDataset.from_tensors(x, [f"k{i % 8}" for i in range(48)],
                                     groups={f"k{j}": f"g{j // 2}" for j in range(8)})
'''


def _train_file(project: Path, name: str, text: str) -> subprocess.CompletedProcess:
    """Write the experiment file ``name`` and train it into ``project/run``."""
    (project / name).write_text(text)
    return command("train", name, "--out", "run", "--no-progress", cwd=project)


@pytest.fixture
def project(tmp_path):
    """A folder with the user's own model and data modules."""
    (tmp_path / "my_models.py").write_text(MODELS)
    (tmp_path / "my_data.py").write_text(DATA)
    return tmp_path


def test_own_experiment_file_with_own_model_on_a_torch_dataset(project):
    result = _train_file(
        project, "signals.yaml",
        "extends: glyphs-fewshot\n"
        "dataset: my_data:signals\n"
        "model: my_models:build\n"
        "model_options: {hidden: 6}\n"
        "methods: [warp-leap, leap]\n"
        "n_way: 2\nk_shot: 1\nk_query: 2\nbatched: false\n"
        "iterations: 2\nsteps: 1\neval_steps: 1\nmeta_batch: 2\neval_tasks: 4\n"
        "val_every: 2\nval_tasks: 2\ncheckpoint_every: 1\n")
    assert result.returncode == 0, result.stderr
    out = project / "run"
    summary = _json(out / "summary.json")
    assert summary["experiment"] == "signals" and set(summary["results"]) == \
        {"warp-leap", "leap"}
    record = _json(out / "config.json")
    assert record["config"]["model"] == "my_models:build" and record["config"]["n_way"] == 2
    assert record["config"]["k_query"] == 2 and record["config"]["warp_lr"] == 0.001  # extended
    assert (out / "warp-leap" / "best.pt").is_file()
    state = torch.load(out / "warp-leap" / "checkpoint.pt", weights_only=False)["learner"]
    assert state is not None
    # the warp started at the identity and stayed square; leap's model has no warp
    from warpgrad.experiments.classification import ClassificationExperiment
    from warpgrad.experiments.registry import load_run

    sys.path.insert(0, str(project))
    cwd = os.getcwd()
    try:
        os.chdir(project)
        config = load_run(out)[2]
        experiment = ClassificationExperiment(config, "signals")
        warped = experiment.build_learner("warp-leap").model
        assert warped.warp_modules == ("3",)
        assert torch.equal(warped.module[3].weight.detach(), torch.eye(6))
        assert experiment.build_learner("leap").model.warp_modules == ()
    finally:
        os.chdir(cwd)
        sys.path.remove(str(project))
    resumed = command("train", "--resume", "run", "--no-progress", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    evaluated = command("evaluate", "run", "--checkpoint", "best", "--no-progress", cwd=project)
    assert evaluated.returncode == 0, evaluated.stderr
    assert _json(out / "evaluation-best.json")["results"]["leap"]["checkpoint"] == "best"


def test_own_model_on_grouped_float_vectors_multishot(project):
    result = _train_file(
        project, "vectors.yaml",
        "kind: classification\ndataset: my_data:vectors\nmodel: my_models:build\n"
        "protocol: multishot\nmethods: [warp-leap]\nn_way: 2\ntrain_shots: 3\ntest_shots: 2\n"
        "n_train_tasks: 2\nn_test_tasks: 1\naugment: false\nbatch_size: 4\n"
        "iterations: 2\nsteps: 1\neval_steps: 1\nmeta_batch: 2\n")
    assert result.returncode == 0, result.stderr
    alphabets = _json(project / "run" / "data.json")["alphabets"]
    assert sorted(alphabets["train"] + alphabets["test"] + alphabets["val"]) == \
        ["g0", "g1", "g2", "g3"]
    augmented = command("train", "vectors.yaml", "augment=true", "--out", "other", cwd=project)
    assert augmented.returncode == 2
    assert augmented.stderr.strip().endswith("holds features of shape (5,): set augment: false")
    no_model = command("train", "vectors.yaml", "model=''", "--out", "other", cwd=project)
    assert no_model.returncode == 2 and "name your model's builder with model:" in \
        no_model.stderr
    assert not (project / "other").exists()


@pytest.mark.parametrize("yaml_text, message", [
    ("extends: nonsense\n", "unknown experiment 'nonsense'"),
    ("kind: sine\nextends: glyphs-fewshot\n", "kind 'sine' differs from the kind"),
    ("- a list\n", "expected a mapping of config keys"),
    ("kind: [unclosed\n", "not a readable YAML file"),
    ("extends: glyphs-fewshot\nmodel: no_such_module:build\n", "model: cannot import "
     "'no_such_module'"),
    ("extends: glyphs-fewshot\nmodel: my_models:missing\n", "has no function 'missing'"),
    ("extends: glyphs-fewshot\ndataset: nonsense\n", "dataset must be one of"),
])
def test_bad_experiment_files_are_one_line_errors(project, yaml_text, message, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    (project / "bad.yaml").write_text(yaml_text)
    result = invoke("train", "bad.yaml", "--show-config")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = invoke("train", "absent.yaml")
    assert missing.exit_code == 2 and "experiment file absent.yaml does not exist" in \
        missing.stderr


# -- rough edges --------------------------------------------------------------------------------
def test_too_few_groups_for_the_tasks_asked_is_one_line_exit_2(tmp_path):
    write_image_folder(tmp_path / "images", groups=4, classes=3, images=3)
    out = tmp_path / "run"
    result = invoke("train", *MULTISHOT, "n_train_tasks=3", "n_test_tasks=2", "--data-root",
                    tmp_path / "images", "--out", out, "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: folder: 4 groups (alphabets) have 3 classes with 2+1 images each, but "
        "n_train_tasks + n_test_tasks = 3 + 2 asks for 5; lower them (their sum at most 4)")
    assert not out.exists()
    nothing_left = invoke("train", *MULTISHOT, "n_train_tasks=2", "n_test_tasks=2",
                          "val_every=1", "--data-root", tmp_path / "images", "--out", out)
    assert nothing_left.exit_code == 2 and "leaves no validation tasks" in nothing_left.stderr


def test_a_broken_image_in_a_folder_dataset_is_one_line_exit_2(tmp_path):
    write_image_folder(tmp_path / "images", groups=0, classes=10, images=3)
    broken = tmp_path / "images" / "class0-4" / "9.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = invoke("train", *FEWSHOT, "--data-root", tmp_path / "images", "--out",
                    tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: cannot decode image {broken}: ")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    checked = invoke("data", "check", "glyphs-fewshot", "dataset=folder", "--data-root",
                     tmp_path / "images")
    assert checked.exit_code == 2 and str(broken) in checked.stderr


def test_show_config_of_an_experiment_file_describes_its_fields(tmp_path):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text("extends: sine\nsteps: 3\nhidden: [8]\n")
    result = invoke("train", path, "--show-config", "meta_lr=0.01")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert (shown["kind"], shown["steps"], shown["hidden"], shown["meta_lr"]) == \
        ("sine", 3, [8], 0.01)
    assert ("# full-batch SGD steps of each task's adaptation, in meta-training and "
            "evaluation\nsteps: 3\n") in result.stdout


def test_show_config_prints_the_config_when_the_data_is_absent():
    result = invoke("train", "omniglot-multishot", "--data-root", "/no/such/folder",
                    "--show-config")
    assert result.exit_code == 0, result.output
    assert "dataset: omniglot" in result.stdout and "data_root: /no/such/folder" in \
        result.stdout and "val_every: 0" in result.stdout


def test_help_lists_every_command_and_promises_nothing_missing():
    top = invoke("--help").stdout
    for line in ("warpgrad bench", "warpgrad data contact-sheet", "warpgrad data stats",
                 "my-experiment.yaml"):
        assert line in top
    data = invoke("data", "--help").stdout
    assert "prepare" not in data.replace("nothing to prepare", "")
    assert {"check", "stats", "contact-sheet"} <= set(data.split())
    import importlib.util

    assert importlib.util.find_spec("warpgrad.data.__main__") is None  # one data command line


def test_data_stats_reports_sizes_and_a_nearest_neighbour_figure(tmp_path):
    write_image_folder(tmp_path / "images", groups=0, classes=30, images=6)
    result = invoke("data", "stats", "glyphs-fewshot", "dataset=folder", "--data-root",
                    tmp_path / "images", "--episodes", "20")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["train", "18", "classes", "108", "examples", "0", "groups",
                                "3x28x28"]
    assert [line.split()[:2] for line in lines[1:3]] == [["val", "6"], ["test", "6"]]
    figure = re.fullmatch(r"1-NN 5-way 1-shot on 6 test classes: ([\d.]+) ± ([\d.]+)% "
                          r"\(chance 20%\)", lines[3])
    assert figure and 0.0 <= float(figure[1]) <= 100.0
    assert lines[4].startswith("1-NN 5-way 5-shot: skipped (")  # 6 images < 5 + 5


def test_a_ci_over_one_task_says_there_is_no_interval():
    from warpgrad.experiments.run import format_table

    one = {"metric": "test_accuracy", "results": {"leap": {
        "test_accuracy": {"mean": 0.5, "ci95": 0.0, "n": 1}, "meta_train_seconds": 1.0}}}
    assert "50.00 (n = 1, no CI)" in format_table([one])
    assert "±" not in format_table([one])


def test_importing_the_command_imports_no_torch():
    code = ("import sys, warpgrad.cli\n"
            "from warpgrad.experiments import registry\n"
            "try:\n    registry.load_experiment('nonsense')\n"
            "except registry.ConfigError:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_api_misuse_says_what_was_expected():
    import torch.nn.functional as F

    import warpgrad

    with pytest.raises(TypeError, match="make_learner needs a WarpedModel, got Sequential"):
        warpgrad.make_learner("leap", nn.Sequential(nn.Linear(1, 1)), F.mse_loss, steps=1)
    learner = warpgrad.make_learner("leap", warpgrad.mlp(warp=None), F.mse_loss, steps=1)
    x = torch.zeros(4, 1)
    with pytest.raises(TypeError, match=r"meta_step needs a sequence of Task .* type tuple"):
        learner.meta_step([(x, x)])


def test_identity_init_starts_user_warps_at_the_identity():
    from warpgrad.models import identity_init_

    warp = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Conv2d(3, 3, 3, padding=1))
    identity_init_(warp)
    x = torch.randn(2, 4)
    assert torch.equal(warp[0](x), x)
    image = torch.randn(1, 3, 5, 5)
    assert torch.allclose(warp[2](image), image)
    with pytest.raises(ValueError, match="does not map its input's shape to itself"):
        identity_init_(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"has no nn\.Linear or nn\.Conv2d"):
        identity_init_(nn.ReLU())


def test_tensorboard_gets_validation_test_metrics_and_hparams(tmp_path, monkeypatch):
    from warpgrad.experiments import training

    class Board:
        def __init__(self):
            self.scalars, self.hparams = [], []

        def add_scalar(self, key, value, step):
            self.scalars.append((key, step))

        def add_hparams(self, hparams, metrics, run_name=None):
            self.hparams.append((hparams, metrics))

        def close(self):
            pass

    boards = []
    monkeypatch.setattr(training, "_tensorboard", lambda d: boards.append(Board()) or boards[-1])
    write_image_folder(tmp_path / "images", groups=4, classes=3, images=3)
    result = invoke("train", *MULTISHOT, "n_train_tasks=2", "n_test_tasks=1", "val_every=2",
                    "-m", "leap", "--data-root", tmp_path / "images", "--out", tmp_path / "run",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    training_board, results_board = boards
    assert ("val_accuracy", 2) in training_board.scalars
    assert ("val_accuracy", 1) not in training_board.scalars
    assert ("adapt_loss_last", 1) in training_board.scalars
    assert ("test/test_accuracy", 2) in results_board.scalars
    (hparams, metrics), = results_board.hparams
    assert hparams["n_way"] == 3 and hparams["methods"] == "['leap']"
    assert set(metrics) >= {"test/test_accuracy", "test/test_loss"}


def test_plots_say_what_the_bars_are_in_the_table_units_with_chance(tmp_path, monkeypatch):
    import matplotlib.figure

    from warpgrad.experiments.run import plot_learning_curves, plot_results

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda f, *a, **k: figures.append(f))
    run = {"metric": "test_accuracy", "chance": 0.2, "results": {
        m: {"test_accuracy": {"mean": v, "ci95": 0.05, "n": 9}, "meta_train_seconds": 1.0}
        for m, v in (("warp-leap", 0.6), ("leap", 0.4))}}
    plot_results([run, run], tmp_path / "r.png", ["first", "second"])
    ax = figures[-1].axes[0]
    assert "95% confidence intervals" in ax.get_title()
    assert ax.get_ylabel() == "test accuracy (%)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance", "first", "second"]
    assert max(b.get_height() for b in ax.patches) == pytest.approx(60.0)
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":"] == [20.0]
    history = [{"iteration": i, "adapt_loss_last": 1.0 / i, "warp_loss": 2.0 / i}
               for i in (1, 2)]
    plot_learning_curves({"warp-leap": history}, tmp_path / "c.png", "glyphs-multishot")
    ax = figures[-1].axes[0]
    assert ax.get_title() == "glyphs-multishot: learning curves"
    assert "meta-loss" in ax.get_ylabel() and "after adaptation" in ax.get_ylabel()
