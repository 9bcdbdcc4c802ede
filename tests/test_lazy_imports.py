"""Config errors and ``--show-config`` come back without importing torch: the config
dataclasses and the names they accept are torch-free (:mod:`warpgrad.experiments.schemas`),
and the torch-free copies of torch-side names stay equal to them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from warpgrad.experiments import registry, schemas, validation

REPO_ROOT = Path(__file__).resolve().parents[1]

# `python -m warpgrad ARGS`, then whether that imported torch
AS_COMMAND = """
import runpy, sys
sys.argv = ["warpgrad", *sys.argv[1:]]
try:
    runpy.run_module("warpgrad", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    print("exit", stop.code, "torch imported", "torch" in sys.modules)
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WARPGRAD_DATA": "/no/such/folder"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)


@pytest.mark.parametrize(("args", "error"), [
    (["train", "nonsense=1"], "error: unknown config key 'nonsense'; keys: accelerate, "),
    (["train", "glyphs-multishot", "n_way=abc"],
     "error: config key 'n_way': got 'abc'; expected a whole number, e.g. n_way=20"),
    (["train", "sine", "inner_lr=-1"],
     "error: inner_lr is a learning rate and must be positive, got -1.0"),
    (["train", "continual-sine", "method=maml"],
     "error: unknown method 'maml'; expected one of ['warp-leap', 'warpgrad', "),
    (["train", "maze", "maze_size=4"],
     "error: maze_size must be an odd number, at least 5; got 4"),
    (["train", "glyphs-fewshot", "--method", "warp-leap,nope"],
     "error: unknown method(s) ['nope']; expected any of ['finetune', 'fomaml', 'leap', "),
    (["train", "glyphs-fewshot", "precision=fp8"],
     "error: precision must be one of ['fp32', 'bf16'], got 'fp8'"),
    (["data", "check", "glyphs-fewshot", "k_shot=0"], "error: k_shot must be at least 1, got 0"),
])
def test_a_config_error_is_one_line_and_imports_no_torch(args, error):
    out = _python(AS_COMMAND, *args)
    assert out.stdout.strip() == "exit 2 torch imported False", out.stderr
    assert out.stderr.startswith(error)
    assert out.stderr.count("\n") == 1  # one line, no traceback


def test_show_config_of_every_shipped_experiment_imports_no_torch():
    code = """
import sys
from click.testing import CliRunner
from warpgrad.cli import main
from warpgrad.experiments import registry
for name in registry.experiment_names():
    kind, config = registry.load_experiment(name)
    result = CliRunner().invoke(main, ["train", name, "--show-config"])
    assert result.exit_code == 0, (name, result.output)
    assert result.output.startswith("# experiment kind"), name
    assert f"kind: {kind}" in result.output, name
    assert "# SGD step size" in result.output or kind == "maze", name  # field docs found
print("torch imported", "torch" in sys.modules)
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch imported False"


def test_the_torch_free_names_equal_the_torch_side_ones():
    from warpgrad import accel, rl
    from warpgrad.algorithms import METHODS

    assert tuple(METHODS) == validation.METHOD_NAMES
    assert {m for m, spec in METHODS.items() if spec.needs_warps} == validation.WARPED_METHODS
    assert schemas.PRECISIONS == accel.PRECISIONS
    assert schemas.AGENTS == rl.AGENTS
    assert set(schemas.CONTINUAL_METHODS) <= set(METHODS)
    from warpgrad.tasks import peaks

    assert schemas.SURFACES == peaks.SURFACES


def test_the_configs_are_the_ones_each_kind_runs_and_keep_their_import_paths():
    from warpgrad.experiments import classification, continual, geometry, maze, sine

    moved = {"classification": classification.ClassificationConfig,
             "sine": sine.SineConfig, "continual": continual.ContinualConfig,
             "maze": maze.MazeConfig, "geometry": geometry.GeometryConfig}
    assert moved == registry.CONFIGS
    assert {kind: spec.config for kind, spec in registry.kinds().items()} == moved
    assert classification.default_data_root is schemas.default_data_root
