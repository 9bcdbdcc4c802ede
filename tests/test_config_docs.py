"""Every config field says what it means, and ``--show-config`` prints it as YAML comments."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
import yaml
from click.testing import CliRunner
from omegaconf import OmegaConf

from warpgrad.cli import main
from warpgrad.experiments import registry
from warpgrad.experiments.config_docs import field_docs


def show_config(*args: str) -> str:
    result = CliRunner().invoke(main, ["train", *args, "--show-config"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("kind", registry.KIND_NAMES)
def test_every_field_of_every_config_has_a_description(kind):
    config_cls = registry.kinds()[kind].config
    docs = field_docs(config_cls)
    names = [f.name for f in fields(config_cls)]
    assert [n for n in names if not docs.get(n, "").strip()] == []  # a new field needs one
    assert set(docs) == set(names)
    assert all("\n" not in text for text in docs.values())  # one comment line each
    # the docstrings leave the structured config as it was: same keys, same defaults
    assert OmegaConf.to_object(OmegaConf.structured(config_cls)) == config_cls()


def test_a_field_without_a_description_is_missing_from_the_docs():
    @dataclass
    class Partly:
        described: int = 1
        """what it is,
        over two lines"""
        bare: float = 0.5  # a comment is not a description
        after: str = "x"
        """the last one"""

    assert field_docs(Partly) == {"described": "what it is, over two lines",
                                  "after": "the last one"}


@pytest.mark.parametrize("name", registry.experiment_names())
def test_show_config_is_commented_yaml_of_the_resolved_values(name, monkeypatch):
    monkeypatch.setenv("WARPGRAD_DATA", "/no/such/folder")  # absent data is no obstacle
    kind, config = registry.load_experiment(name)
    shown = show_config(name)
    loaded = yaml.safe_load(shown)
    assert loaded.pop("kind") == kind
    config_cls = type(config)
    assert list(loaded) == [f.name for f in fields(config_cls)]
    back = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_cls), loaded))
    assert back == config
    lines = shown.splitlines()
    docs = field_docs(config_cls)
    for key in ("kind", *loaded):  # each key right under its description
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert lines[at - 1].startswith("# ") and len(lines[at - 1]) > 4
        if key != "kind":
            assert lines[at - 1] == f"# {docs[key]}"


def test_show_config_describes_the_fields_and_keeps_overrides():
    shown = show_config("sine", "inner_lr=0.02")
    assert "# SGD step size of the adaptation (task) parameters θ\ninner_lr: 0.02\n" in shown
    assert yaml.safe_load(shown)["inner_lr"] == 0.02
    shown = show_config("glyphs-multishot", "point_stride=3")
    assert ("# keep every k-th adaptation step (and the last) as a WarpGrad trajectory point\n"
            "point_stride: 3\n") in shown
