"""Experiments by name: the shipped YAML configs, how they resolve and how each kind runs.

An experiment is a YAML file in ``warpgrad/experiments/configs/`` whose ``kind`` names the
config dataclass it fills and the code that runs it, or your own YAML file in the same
schema (given by its path), which may start from a shipped experiment with ``extends:
NAME``. Resolution order: the dataclass's defaults, then the extended experiment's YAML,
then the YAML, then ``key=value`` overrides from the command line. Unknown keys and wrong
types are rejected by OmegaConf's structured configs; values are then validated by the
dataclass itself.

The config dataclasses are torch-free (:mod:`~warpgrad.experiments.schemas`); the experiment
modules (and torch) are imported on first use of :data:`KINDS`, so that the command's help,
``--show-config`` and its errors about names, files, keys and values come back at once.
"""

from __future__ import annotations

import difflib
import functools
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from warpgrad.experiments.schemas import (
    ClassificationConfig,
    ContinualConfig,
    GeometryConfig,
    MazeConfig,
    SineConfig,
    default_data_root,
)


class ConfigError(ValueError):
    """A bad experiment name, override, key, type or value; the message says what is
    accepted."""


@dataclass(frozen=True)
class Kind:
    """How to run one kind of experiment.

    ``config``: its config dataclass; ``run(config, name, run_dir, progress) -> summary``;
    ``table(summary) -> str``; ``experiment(config, name)`` builds the
    :class:`~warpgrad.experiments.run.Experiment` (kinds that have one support
    ``warpgrad evaluate``).
    """

    config: type
    run: Callable[[Any, str, Path, bool], dict[str, Any]]
    table: Callable[[dict[str, Any]], str]
    experiment: Callable[[Any, str], Any] | None = None


def _protocol_kind(config_cls: type, make: Callable[[Any, str], Any]) -> Kind:
    from warpgrad.experiments import run as run_module

    def run(config: Any, name: str, run_dir: Path, progress: bool) -> dict[str, Any]:
        return run_module.run(make(config, name), run_record(name, config), run_dir,
                              progress=progress)

    return Kind(config_cls, run, lambda summary: run_module.format_table([summary]), make)


def _single_method_kind(config_cls: type, module: Any) -> Kind:
    """An experiment module with its own ``run(config, run_dir, progress, record)`` and
    ``format_table`` (one method per run: continual learning, the maze)."""

    def run(config: Any, name: str, run_dir: Path, progress: bool) -> dict[str, Any]:
        return module.run(config, run_dir, progress=progress, record=run_record(name, config))

    return Kind(config_cls, run, module.format_table)


CONFIGS: dict[str, type] = {
    "classification": ClassificationConfig,
    "sine": SineConfig,
    "continual": ContinualConfig,
    "maze": MazeConfig,
    "geometry": GeometryConfig,
}
"""The config dataclass of each kind of experiment (torch-free: resolving and validating a
config imports no experiment module)."""


@functools.cache
def kinds() -> dict[str, Kind]:
    """Every kind of experiment, by the name a config's ``kind`` gives (imports them)."""
    from warpgrad.experiments import continual, geometry, maze
    from warpgrad.experiments.classification import ClassificationExperiment
    from warpgrad.experiments.sine import SineExperiment

    return {
        "classification": _protocol_kind(ClassificationConfig,
                                         lambda c, name: ClassificationExperiment(c, name)),
        "sine": _protocol_kind(SineConfig, lambda c, name: SineExperiment(c)),
        "continual": _single_method_kind(ContinualConfig, continual),
        "maze": _single_method_kind(MazeConfig, maze),
        "geometry": _single_method_kind(GeometryConfig, geometry),
    }


KIND_NAMES = tuple(CONFIGS)


def __getattr__(name: str) -> Any:
    if name == "KINDS":  # imported on first use
        return kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_EXPERIMENT = "glyphs-multishot"

RETIRED_KEYS = frozenset({"channels_last", "compile", "parallel_tasks"})
"""Speed switches of earlier releases that a recorded ``config.json`` may still hold: they
changed nothing but float rounding, so a run that has them resumes without them."""


def run_record(name: str, config: Any) -> dict[str, Any]:
    """What ``config.json`` holds: enough to rebuild the run (``--resume``, ``evaluate``)."""
    kind = next(k for k, v in CONFIGS.items() if isinstance(config, v))
    return {"experiment": name, "kind": kind, "config": asdict(config)}


CHECKPOINTS = ("last", "best")


def evaluation_path(run_dir: Path, checkpoint: str = "last", eval_tasks: int | None = None
                    ) -> Path:
    """Where ``evaluate_run`` writes: ``evaluation.json`` for the last checkpoints on the
    run's own test tasks; ``evaluation-best.json``, ``evaluation-tasks5.json``,
    ``evaluation-best-tasks5.json`` for the other choices, so none replaces another."""
    parts = ["evaluation"] + (["best"] if checkpoint == "best" else []) + (
        [f"tasks{eval_tasks}"] if eval_tasks is not None else [])
    return run_dir / ("-".join(parts) + ".json")


def evaluate_run(run_dir: Path, *, eval_tasks: int | None = None, progress: bool = True,
                 checkpoint: str = "last", force: bool = False) -> tuple[str, dict[str, Any]]:
    """Re-evaluate every method's ``checkpoint`` (``"last"``: ``checkpoint.pt``; ``"best"``:
    ``best.pt``, the best on validation) in ``run_dir``; writes :func:`evaluation_path`,
    which must not exist unless ``force``. Returns the kind and the summary
    (``summary.json``'s schema; each result's ``checkpoint`` says which was used)."""
    from warpgrad.experiments import run as run_module
    from warpgrad.experiments.rundir import load_checkpoint, open_existing, restoring, write_json
    from warpgrad.experiments.training import evaluate

    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    name, kind, config = load_run(run_dir)
    # writable and ours before anything is computed; released however this ends
    with open_existing(run_dir):
        make = kinds()[kind].experiment
        if make is None:
            raise ConfigError(f"experiment kind {kind!r} has no separate evaluation; its run "
                              "already evaluated (see summary.json)")
        out = evaluation_path(run_dir, checkpoint, eval_tasks)
        if out.exists() and not force:
            raise ConfigError(f"{out} exists; add --force to replace it")
        if eval_tasks is not None:
            config = _resolve(type(config), [OmegaConf.structured(config)], (),
                              {"eval_tasks": eval_tasks})
        experiment = make(config, name)
        file = "best.pt" if checkpoint == "best" else "checkpoint.pt"
        for method in experiment.methods:
            if method != "no-meta" and not (run_dir / method / file).is_file():
                hint = (f"the run did not validate (val_every={getattr(config, 'val_every', 0)});"
                        " evaluate its last checkpoints" if checkpoint == "best" else
                        f"train it first (warpgrad train --resume {run_dir})")
                raise ConfigError(f"{run_dir}: method {method!r} has no {file}; {hint}")
        tasks = experiment.test_tasks()
        results = {}
        for method in experiment.methods:
            learner = experiment.build_learner(method)
            path = run_dir / method / file
            seconds, iterations = 0.0, 0
            if path.is_file():
                state = load_checkpoint(path)
                with restoring(path):
                    learner.load_state_dict(state["learner"])
                    seconds, iterations = state["elapsed"], state["iteration"]
            metrics = evaluate(learner, tasks, seed=experiment.seed, steps=experiment.eval_steps,
                               progress=progress, desc=f"evaluate {method}")
            results[method] = {**metrics, "meta_train_seconds": seconds, "iterations": iterations,
                               "checkpoint": checkpoint if path.is_file() else "none"}
        summary = run_module.summarise(experiment, results)
        write_json(out, summary)
    return kind, summary


def is_experiment_file(name: str) -> bool:
    """A path to your own YAML file rather than a shipped experiment's name."""
    return name.endswith((".yaml", ".yml")) or "/" in name


def experiment_label(name: str) -> str:
    """The name a run records and its default directory starts with: the shipped
    experiment's name, or the file's stem."""
    return Path(name).stem if is_experiment_file(name) else name


def experiment_names() -> list[str]:
    """Every shipped experiment."""
    folder = resources.files("warpgrad.experiments") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_experiment(
    name: str,
    overrides: Sequence[str] = (),
    *,
    methods: Sequence[str] | None = None,
    data_root: str | None = None,
    device: str | None = None,
) -> tuple[str, Any]:
    """Resolve an experiment's config: ``(kind, config dataclass instance)``. ``name`` is a
    shipped experiment or the path of your own YAML file."""
    raw = _read_experiment(name)
    kind = raw.pop("kind", None)
    if kind not in KIND_NAMES:
        raise ConfigError(f"{_shown(name)}: kind must be one of {sorted(KIND_NAMES)}, got "
                          f"{kind!r}")
    name = experiment_label(name)
    config_cls = CONFIGS[kind]
    extra: dict[str, Any] = {}
    fields = config_cls.__dataclass_fields__
    if methods is not None:
        if "methods" in fields:
            extra["methods"] = list(methods)
        elif len(methods) == 1:
            extra["method"] = methods[0]
        else:
            raise ConfigError(f"experiment {name!r} runs one method per run; give one --method")
    if device is not None and "device" in fields:
        extra["device"] = device
    elif device not in (None, "cpu"):
        raise ConfigError(f"experiment {name!r} runs on the CPU only")
    if "data_root" in fields:
        if data_root is not None:
            extra["data_root"] = data_root
        elif not raw.get("data_root") and not any(o.startswith("data_root=") for o in overrides):
            extra["data_root"] = default_data_root()
    config = _resolve(config_cls, [raw], overrides, extra)
    if data_root is not None and getattr(config, "dataset", None) in (None, "glyphs"):
        warnings.warn(f"--data-root {data_root} is unused: experiment {name!r} uses "
                      f"{'embedded' if 'data_root' in fields else 'generated'} data",
                      stacklevel=2)
    return kind, config


def _shown(name: str) -> str:
    return name if is_experiment_file(name) else f"{name}.yaml"


def _shipped(name: str) -> DictConfig:
    names = experiment_names()
    if name not in names:
        raise ConfigError(f"unknown experiment {name!r}; available: {', '.join(names)} (or the "
                          "path of your own .yaml file)")
    path = resources.files("warpgrad.experiments") / "configs" / f"{name}.yaml"
    return OmegaConf.create(path.read_text())


def _read_experiment(name: str) -> DictConfig:
    """The experiment's YAML as one config: a shipped one, or a file (its ``extends``
    merged under it)."""
    if not is_experiment_file(name):
        return _shipped(name)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not a readable YAML file ({first})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys (kind: ..., key: value)")
    base = loaded.pop("extends", None)
    if base is None:
        return OmegaConf.create(loaded)
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must name a shipped experiment, got {base!r}")
    merged = _shipped(base)
    if "kind" in loaded and loaded["kind"] != merged.get("kind"):
        raise ConfigError(f"{path}: kind {loaded['kind']!r} differs from the kind "
                          f"{merged.get('kind')!r} of {base!r}, which it extends")
    return OmegaConf.merge(merged, OmegaConf.create(loaded))


RESUME_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("iterations", "checkpoint_every", "inner_lr", "momentum", "warp_lr",
                       "init_lr", "eval_tasks"),
    "sine": ("iterations", "checkpoint_every", "inner_lr", "meta_lr", "rate_lr", "eval_tasks"),
    "continual": ("iterations", "checkpoint_every", "inner_lr", "meta_lr", "eval_tasks"),
    "maze": ("episodes", "checkpoint_every"),
    "geometry": ("iterations", "checkpoint_every", "warp_lr"),
}
"""The keys ``warpgrad train --resume RUN_DIR KEY=VALUE`` may change, per kind: how long and
how fast to optimise from the checkpoint on (everything else fixes what the checkpoint is)."""


def load_run(run_dir: Path, overrides: Sequence[str] = ()) -> tuple[str, str, Any]:
    """``(experiment name, kind, config)`` of an existing run directory, with ``overrides``
    of the keys in :data:`RESUME_KEYS` applied."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    try:
        record = json.loads(path.read_text())
        kind = record["kind"]
        recorded = {k: v for k, v in record["config"].items() if k not in RETIRED_KEYS}
        name = record["experiment"]
        if kind not in KIND_NAMES:
            raise KeyError(f"kind {kind!r}, expected one of {sorted(KIND_NAMES)}")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except (KeyError, ValueError, AttributeError, TypeError) as error:
        raise ConfigError(f"{path} is not a warpgrad run config ({type(error).__name__}: "
                          f"{error}); expected the config.json warpgrad train wrote") from None
    fixed = [o.split("=", 1)[0] for o in overrides
             if o.split("=", 1)[0] not in RESUME_KEYS[kind]]
    if fixed:
        raise ConfigError(f"--resume can change only {', '.join(RESUME_KEYS[kind])}; "
                          f"{', '.join(map(repr, fixed))} is fixed by the run's checkpoints "
                          "(start a new run to change it)")
    try:
        return name, kind, _resolve(CONFIGS[kind], [OmegaConf.create(recorded)],
                                    overrides, {})
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _resolve(config_cls: type, layers: list, overrides: Sequence[str],
             extra: dict[str, Any]) -> Any:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. iterations=10)")
    fields = config_cls.__dataclass_fields__
    keys = sorted(fields)
    for item in overrides:
        key = item.split("=", 1)[0]
        if key not in fields:
            close = difflib.get_close_matches(key, keys, n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ConfigError(f"unknown config key {key!r}; {hint}keys: {', '.join(keys)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config_cls), *layers,
                                 OmegaConf.from_dotlist(list(overrides)), extra)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        key = str(getattr(error, "full_key", None) or getattr(error, "key", None) or "")
        key = key.split(".")[0].split("[")[0] or _failing_key(config_cls, layers, overrides)
        if not key:
            raise ConfigError(f"config: {message}") from None
        if key not in fields:
            close = difflib.get_close_matches(key, keys, n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ConfigError(f"unknown config key {key!r}; {hint}keys: {', '.join(keys)}"
                              ) from None
        given = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides}
        got = f"got {given[key]!r}; " if key in given else ""
        raise ConfigError(f"config key {key!r}: {got}expected {_accepted_form(key, fields[key])}"
                          ) from None
    except ValueError as error:  # the dataclass's own validation
        raise ConfigError(str(error)) from None


def _failing_key(config_cls: type, layers: list, overrides: Sequence[str]) -> str:
    """The key of the first override OmegaConf rejects on its own (some of its errors do
    not name the key), or ``""``."""
    for item in overrides:
        try:
            OmegaConf.merge(OmegaConf.structured(config_cls), *layers,
                            OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException:
            return item.split("=", 1)[0]
    return ""


def _accepted_form(key: str, field: Any) -> str:
    """How to write a value of ``field`` on the command line (its annotation is a string)."""
    kind = str(field.type).replace(" ", "")
    if key == "methods":
        return "a list of methods, e.g. methods=[warp-leap,leap] (or --method warp-leap,leap)"
    if kind.startswith(("list[int]", "tuple[int,...]")):
        return f"a list of whole numbers, e.g. {key}=[40,40]"
    if kind.startswith("tuple[float,float]"):
        return f"two numbers [low,high], e.g. {key}=[0.0,1.0]"
    if kind.startswith(("list", "tuple")):
        return f"a list, e.g. {key}=[a,b]"
    if kind == "bool":
        return f"true or false, e.g. {key}=true"
    forms = {"int": "a whole number", "float": "a number", "str": "text"}
    return f"{forms.get(kind, kind)}, e.g. {key}={field.default}"
