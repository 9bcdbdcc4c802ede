"""Image classification experiments: the few-shot and multi-shot protocols of the paper.

- ``protocol: multishot`` (Leap / WarpGrad Omniglot protocol): each alphabet (glyphs,
  Omniglot) or general category (tieredImageNet) is one fixed ``n_way`` task with
  ``train_shots`` training and ``test_shots`` held-out images per class; adaptation draws
  batches of ``batch_size`` with replacement, with random-affine augmentation; meta-batches
  are random subsets of the training tasks; evaluation adapts on each held-out task.
- ``protocol: fewshot`` (MAML / Warp-MAML): N-way K-shot episodes with ``k_query`` query
  images per class, from meta-train classes; evaluation on ``eval_tasks`` episodes of
  meta-test classes.

Datasets: ``glyphs`` (embedded, rendered on first use), ``omniglot``, ``mini-imagenet``,
``tiered-imagenet`` (read from ``data_root`` in their standard layouts; see docs/data.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from warpgrad import accel
from warpgrad.algorithms import METHODS, MetaLearner, WarpGrad, check_methods, make_learner
from warpgrad.data import (
    AlphabetTasks,
    ClassDataset,
    FewShotSampler,
    GlyphRecipe,
    load_glyphs,
    load_mini_imagenet,
    load_omniglot,
    load_tiered_imagenet,
    omniglot_standard_split,
    split_by_alphabet,
)
from warpgrad.experiments.validation import check_config
from warpgrad.models import conv4
from warpgrad.tasks import Task

DATASETS = ("glyphs", "omniglot", "mini-imagenet", "tiered-imagenet")
PROTOCOLS = ("multishot", "fewshot")


@dataclass
class ClassificationConfig:
    """Every setting of a classification run (recorded in ``config.json``).

    Defaults are the paper's multi-shot Omniglot protocol on glyphs; the shipped experiment
    configs (``warpgrad/experiments/configs/*.yaml``) override what differs.
    """

    dataset: str = "glyphs"
    protocol: str = "multishot"
    methods: list[str] = field(default_factory=lambda: ["warp-leap", "leap"])
    # tasks
    n_way: int = 20
    k_shot: int = 1
    k_query: int = 15
    train_shots: int = 15
    test_shots: int = 5
    batch_size: int = 128
    n_train_tasks: int = 30
    n_test_tasks: int = 10
    augment: bool = True
    image_size: int = 28
    # learner
    filters: int = 64
    warp: str = "conv3x3"
    warp_depth: int = 1
    warp_batch_norm: bool = False
    warp_activation: str = "none"
    warp_residual: bool = False
    batch_norm: str = "batch"
    # adaptation
    steps: int = 100
    eval_steps: int = 100
    inner_lr: float = 0.1
    momentum: float = 0.0
    # meta-training
    iterations: int = 1000
    meta_batch: int = 20
    meta_optimizer: str = "sgd"
    warp_lr: float = 0.1
    init_lr: float = 0.1
    warp_variant: str = "exact"
    warp_regime: str = "offline"
    points_per_update: int = 1
    warp_epochs: int = 1
    point_stride: int = 1
    point_fraction: float = 1.0
    batched: bool = False
    buffer_dtype: str = "float32"
    buffer_on_disk: bool = False
    # speed (docs/performance.md): the accelerator gives the same numbers; bf16 does not
    accelerate: bool = True
    precision: str = "fp32"
    cuda_graphs: bool = False  # GPU only: replay fixed-shape passes from CUDA graphs
    # evaluation and bookkeeping
    eval_tasks: int = 600
    checkpoint_every: int = 10
    seed: int = 0
    device: str = "cpu"
    data_root: str = ""

    def __post_init__(self) -> None:
        check_methods(self.methods)
        _choice("dataset", self.dataset, DATASETS)
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("warp", self.warp, ("scale", "linear", "conv3x3"))
        _choice("warp_activation", self.warp_activation, ("none", "relu", "leaky_relu", "tanh"))
        _choice("batch_norm", self.batch_norm, ("batch", "running"))
        _choice("buffer_dtype", self.buffer_dtype, ("float32", "float16", "bfloat16"))
        _choice("precision", self.precision, accel.PRECISIONS)
        check_accelerator(self)
        for name in ("n_way", "k_shot", "train_shots", "test_shots", "batch_size",
                     "n_train_tasks", "n_test_tasks", "image_size", "filters", "warp_depth",
                     "steps", "eval_steps", "iterations", "meta_batch", "points_per_update",
                     "warp_epochs", "point_stride", "eval_tasks", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.point_fraction <= 1.0:
            raise ValueError(f"point_fraction must be in (0, 1], got {self.point_fraction}")
        root = Path(self.data_root).expanduser()
        if self.dataset != "glyphs" and not root.is_dir():
            problem = "is a file, not a folder" if root.exists() else "does not exist"
            raise ValueError(
                f"dataset {self.dataset!r}: data root {self.data_root!r} {problem}; put the "
                "files there (layouts: docs/data.md) or pass --data-root / set WARPGRAD_DATA")
        check_config(self)

    @property
    def in_channels(self) -> int:
        return 1 if self.dataset in ("glyphs", "omniglot") else 3


def check_accelerator(config: Any) -> None:
    """The accelerator's switches need the accelerator."""
    if not config.accelerate:
        for name, off in (("precision", "fp32"), ("cuda_graphs", False)):
            if getattr(config, name, off) != off:
                raise ValueError(f"{name}={getattr(config, name)} is a switch of the "
                                 "accelerator; it needs accelerate=true")


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def default_data_root() -> str:
    """``$WARPGRAD_DATA``, else ``~/warpgrad-data``."""
    return os.environ.get("WARPGRAD_DATA") or str(Path.home() / "warpgrad-data")


def dataset_root(config: ClassificationConfig) -> Path:
    """Where a real dataset's files are: ``data_root/<dataset>`` if that folder exists,
    else ``data_root`` itself."""
    root = Path(config.data_root).expanduser()
    nested = root / config.dataset
    return nested if nested.is_dir() else root


def load_splits(config: ClassificationConfig) -> dict[str, ClassDataset]:
    """The dataset as ``{"all": ...}`` (split into tasks by alphabet later) or as
    ``{"train", "val", "test"}`` class splits."""
    size = config.image_size
    if config.dataset == "glyphs":
        glyphs = load_glyphs(GlyphRecipe(image_size=size))
        if config.protocol == "multishot":
            return {"all": glyphs}
        splits = split_by_alphabet(glyphs, seed=config.seed)
        return {"train": splits.train, "val": splits.val, "test": splits.test}
    root = dataset_root(config)
    if config.dataset == "omniglot":
        omniglot = load_omniglot(root, image_size=size)
        if config.protocol == "multishot":
            return {"all": omniglot}
        splits = omniglot_standard_split(omniglot, seed=config.seed)
        return {"train": splits.train, "val": splits.val, "test": splits.test}
    loader = load_mini_imagenet if config.dataset == "mini-imagenet" else load_tiered_imagenet
    return {split: loader(root, split, image_size=size) for split in ("train", "val", "test")}


class ClassificationExperiment:
    """The :class:`~warpgrad.experiments.run.Experiment` of a :class:`ClassificationConfig`."""

    metric = "test_accuracy"
    higher_is_better = True

    def __init__(self, config: ClassificationConfig, name: str = "classification") -> None:
        self.config, self.name = config, name
        self.methods = config.methods
        self.iterations, self.checkpoint_every = config.iterations, config.checkpoint_every
        self.seed, self.eval_steps = config.seed, config.eval_steps
        c = config
        splits = load_splits(c)
        self._record: dict[str, Any] = {"dataset": c.dataset, "protocol": c.protocol}
        if c.protocol == "multishot":
            options = dict(n_way=c.n_way, train_shots=c.train_shots, test_shots=c.test_shots,
                           batch_size=c.batch_size, augment=c.augment, seed=c.seed,
                           device=c.device)
            if "all" in splits:
                tasks = AlphabetTasks(splits["all"], n_train_tasks=c.n_train_tasks,
                                      n_test_tasks=c.n_test_tasks, **options)
                self.train, self.test = tasks.train, tasks.test
                self._record["alphabets"] = tasks.alphabets
            else:  # predefined class splits: tasks by category within each split
                train = AlphabetTasks(splits["train"], n_train_tasks=c.n_train_tasks,
                                      n_test_tasks=0, **options)
                test = AlphabetTasks(splits["test"], n_train_tasks=0,
                                     n_test_tasks=c.n_test_tasks, **options)
                self.train, self.test = train.train, test.test
                self._record["alphabets"] = {"train": train.alphabets["train"],
                                             "test": test.alphabets["test"]}
            if not self.train or not self.test:
                raise ValueError(f"{c.dataset}: no {c.n_way}-way tasks with "
                                 f"{c.train_shots}+{c.test_shots} images per class for "
                                 f"meta-training or meta-testing")
            self.sampler = None
        else:
            self.sampler = FewShotSampler(splits["train"], c.n_way, c.k_shot, c.k_query,
                                          device=c.device, seed=c.seed)
            test_sampler = FewShotSampler(splits["test"], c.n_way, c.k_shot, c.k_query,
                                          device=c.device, seed=c.seed)
            self.test = test_sampler.episodes(c.eval_tasks, seed=c.seed + 10_000)
            self._record["classes"] = {s: list(d.class_names) for s, d in splits.items()}

    def build_learner(self, method: str) -> MetaLearner:
        c = self.config
        torch.manual_seed(c.seed)
        spec = METHODS[method]
        model = conv4(
            c.n_way, in_channels=c.in_channels, image_size=c.image_size, filters=c.filters,
            warp=c.warp if spec.needs_warps else None, warp_depth=c.warp_depth,
            warp_batch_norm=c.warp_batch_norm, warp_residual=c.warp_residual,
            warp_activation=None if c.warp_activation == "none" else c.warp_activation,
            batch_norm=c.batch_norm)
        if c.accelerate:
            model = accel.convert(model, precision=c.precision, cuda_graphs=c.cuda_graphs)
        warp = (WarpGrad(c.warp_variant, c.warp_regime, epochs=c.warp_epochs,
                         points_per_update=c.points_per_update, stride=c.point_stride,
                         point_fraction=c.point_fraction,
                         batched=c.batched, buffer_dtype=getattr(torch, c.buffer_dtype),
                         buffer_on_disk=c.buffer_on_disk) if spec.warp else None)
        return make_learner(method, model.to(c.device), F.cross_entropy, steps=c.steps,
                            warp=warp, inner_lr=c.inner_lr, momentum=c.momentum,
                            warp_lr=c.warp_lr, init_lr=c.init_lr,
                            meta_optimizer=c.meta_optimizer, seed=c.seed)

    def sample_meta_batch(self, generator: torch.Generator) -> Sequence[Task]:
        c = self.config
        if self.sampler is not None:
            return [self.sampler.sample(generator) for _ in range(c.meta_batch)]
        pick = torch.randperm(len(self.train), generator=generator)[: c.meta_batch]
        return [self.train[i] for i in pick.tolist()]

    def test_tasks(self) -> Sequence[Task]:
        return self.test

    def record(self) -> dict[str, Any]:
        return self._record
