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
``tiered-imagenet`` (read from ``data_root`` in their standard layouts; see docs/data.md),
``folder`` (your images, ``data_root/<class>/*.png`` or ``data_root/<group>/<class>/*.png``)
or ``"package.module:function"`` (a function returning a :class:`ClassDataset` or
:class:`DatasetSplits`). ``model: "package.module:function"`` replaces conv4 by your model
(docs/own-experiments.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from warpgrad import accel
from warpgrad.algorithms import METHODS, MetaLearner, WarpGrad, make_learner
from warpgrad.data import (
    AlphabetTasks,
    ClassDataset,
    DataError,
    DatasetSplits,
    FewShotSampler,
    GlyphRecipe,
    load_folder,
    load_glyphs,
    load_mini_imagenet,
    load_omniglot,
    load_tiered_imagenet,
    omniglot_standard_split,
    split_by_alphabet,
    split_by_class,
)
from warpgrad.experiments.schemas import (  # noqa: F401 (re-exported, torch-free)
    DATASETS,
    PROTOCOLS,
    ClassificationConfig,
    check_accelerator,
    default_data_root,
    import_object,
)
from warpgrad.models import WarpedModel, conv4, identity_init_
from warpgrad.tasks import Task


def dataset_root(config: ClassificationConfig) -> Path:
    """Where a real dataset's files are: ``data_root/<dataset>`` if that folder exists,
    else ``data_root`` itself."""
    root = Path(config.data_root).expanduser()
    nested = root / config.dataset
    return nested if nested.is_dir() else root


def _check_data_root(config: ClassificationConfig) -> None:
    root = Path(config.data_root).expanduser()
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"dataset {config.dataset!r}: data root {config.data_root!r} {problem}; put the "
            "files there (layouts: docs/data.md) or pass --data-root / set WARPGRAD_DATA")


def random_groups(dataset: ClassDataset, size: int, seed: int) -> ClassDataset:
    """The dataset with its classes dealt into seeded random groups of ``size`` (named
    ``"group-000"``...; the last keeps the remainder), used as alphabets by the multi-shot
    protocol when the data has no groups of its own."""
    order = np.random.default_rng(seed).permutation(dataset.num_classes)
    groups = [""] * dataset.num_classes
    for position, c in enumerate(order.tolist()):
        groups[c] = f"group-{position // size:03d}"
    return ClassDataset(dataset.images, dataset.labels, dataset.class_names, groups,
                        dataset.name, {**dataset.meta, "groups": "random"})


def _user_splits(config: ClassificationConfig, data: Any) -> dict[str, ClassDataset]:
    if isinstance(data, ClassDataset):
        data = {"all": data}
    elif isinstance(data, DatasetSplits):
        data = {"train": data.train, "val": data.val, "test": data.test}
    if (not isinstance(data, dict) or not all(isinstance(d, ClassDataset) for d in data.values())
            or set(data) not in ({"all"}, {"train", "val", "test"})):
        raise DataError(f"dataset {config.dataset!r} must return a ClassDataset or "
                        f"DatasetSplits, got {type(data).__name__}")
    if "all" in data and config.protocol == "fewshot":
        splits = split_by_class(data["all"], seed=config.seed)
        return {"train": splits.train, "val": splits.val, "test": splits.test}
    if config.protocol == "multishot":
        return {k: d if d.alphabets is not None else random_groups(d, config.n_way, config.seed)
                for k, d in data.items()}
    return data


def load_splits(config: ClassificationConfig) -> dict[str, ClassDataset]:
    """The dataset as ``{"all": ...}`` (split into tasks by alphabet later) or as
    ``{"train", "val", "test"}`` class splits."""
    size = config.image_size
    if ":" in config.dataset:
        return _user_splits(config, import_object(config.dataset, "dataset")())
    if config.dataset == "folder":
        _check_data_root(config)
        return _user_splits(config, load_folder(config.data_root, image_size=size))
    if config.dataset == "glyphs":
        glyphs = load_glyphs(GlyphRecipe(image_size=size))
        if config.protocol == "multishot":
            return {"all": glyphs}
        splits = split_by_alphabet(glyphs, seed=config.seed)
        return {"train": splits.train, "val": splits.val, "test": splits.test}
    _check_data_root(config)
    root = dataset_root(config)
    if config.dataset == "omniglot":
        omniglot = load_omniglot(root, image_size=size)
        if config.protocol == "multishot":
            return {"all": omniglot}
        splits = omniglot_standard_split(omniglot, seed=config.seed)
        return {"train": splits.train, "val": splits.val, "test": splits.test}
    loader = load_mini_imagenet if config.dataset == "mini-imagenet" else load_tiered_imagenet
    return {split: loader(root, split, image_size=size) for split in ("train", "val", "test")}


def _user_model(c: ClassificationConfig, feature_shape: tuple[int, ...], warps: bool
                ) -> WarpedModel:
    """The ``model`` key's builder, called as ``build(n_classes, input_shape, warps,
    **model_options)``; it returns ``(nn.Module, warp names)`` or a :class:`WarpedModel`."""
    built = import_object(c.model, "model")(c.n_way, feature_shape, warps, **c.model_options)
    if isinstance(built, WarpedModel):
        model = built
    elif (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module)
          and not isinstance(built[1], str)):
        try:
            model = WarpedModel(built[0], warps=list(built[1]))
        except ValueError as error:
            raise DataError(f"model {c.model}: {error}") from None
    else:
        raise DataError(f"model {c.model} must return (nn.Module, [warp submodule names]) or "
                        f"a WarpedModel, got {type(built).__name__}")
    if warps and not model.warp_names:
        raise DataError(f"model {c.model}: method needs warp layers, but the builder named none "
                        "(called with warps=True)")
    if c.identity_warps:
        for name in model.warp_modules:
            identity_init_(model.module.get_submodule(name))
    return model


class ClassificationExperiment:
    """The :class:`~warpgrad.experiments.run.Experiment` of a :class:`ClassificationConfig`."""

    metric = "test_accuracy"
    higher_is_better = True

    def __init__(self, config: ClassificationConfig, name: str = "classification") -> None:
        self.config, self.name = config, name
        self.methods = config.methods
        self.iterations, self.checkpoint_every = config.iterations, config.checkpoint_every
        self.seed, self.eval_steps = config.seed, config.eval_steps
        self.val_every = config.val_every
        self.chance = 1.0 / config.n_way
        c = config
        splits = load_splits(c)
        some = next(iter(splits.values()))
        self.feature_shape = some.feature_shape
        if not some.is_images and not c.model:
            raise DataError(f"dataset {c.dataset!r} holds features of shape "
                            f"{self.feature_shape}, not images [C, H, W]: conv4 cannot read "
                            "them; name your model's builder with model: package.module:function")
        self._record: dict[str, Any] = {"dataset": c.dataset, "protocol": c.protocol}
        self._val: Callable[[], Sequence[Task]]
        if c.protocol == "multishot":
            if c.augment and not some.is_images:
                raise DataError(f"augment=true rotates and shifts images; dataset "
                                f"{c.dataset!r} holds features of shape {self.feature_shape}: "
                                "set augment: false")
            options = dict(n_way=c.n_way, train_shots=c.train_shots, test_shots=c.test_shots,
                           batch_size=c.batch_size, augment=c.augment, seed=c.seed,
                           device=c.device)
            if "all" in splits:
                tasks = AlphabetTasks(splits["all"], n_train_tasks=c.n_train_tasks,
                                      n_test_tasks=c.n_test_tasks, **options)
                self._check_task_counts(len(tasks), tasks.train, tasks.test)
                self.train, self.test = tasks.train, tasks.test
                self._record["alphabets"] = tasks.alphabets
                self._val = lambda: tasks.val
            else:  # predefined class splits: tasks by category within each split
                train = AlphabetTasks(splits["train"], n_train_tasks=c.n_train_tasks,
                                      n_test_tasks=0, **options)
                test = AlphabetTasks(splits["test"], n_train_tasks=0,
                                     n_test_tasks=c.n_test_tasks, **options)
                self._check_task_counts(None, train.train, test.test)
                self.train, self.test = train.train, test.test
                self._record["alphabets"] = {"train": train.alphabets["train"],
                                             "test": test.alphabets["test"]}
                self._val = lambda: AlphabetTasks(splits["val"], n_train_tasks=0,
                                                  n_test_tasks=0, **options).val
            if some.meta.get("groups") == "random":
                self._record["groups"] = f"random groups of {c.n_way} classes (seed {c.seed})"
            self.sampler = None
        else:
            self.sampler = FewShotSampler(splits["train"], c.n_way, c.k_shot, c.k_query,
                                          device=c.device, seed=c.seed)
            test_sampler = FewShotSampler(splits["test"], c.n_way, c.k_shot, c.k_query,
                                          device=c.device, seed=c.seed)
            self.test = test_sampler.episodes(c.eval_tasks, seed=c.seed + 10_000)
            self._record["classes"] = {s: list(d.class_names) for s, d in splits.items()}
            self._val = lambda: FewShotSampler(splits["val"], c.n_way, c.k_shot, c.k_query,
                                               device=c.device, seed=c.seed
                                               ).episodes(c.val_tasks, seed=c.seed + 30_000)

    def _check_task_counts(self, eligible: int | None, train: Sequence[Task],
                           test: Sequence[Task]) -> None:
        """Too few groups for the tasks asked for is an error, never a silent cut."""
        c = self.config
        if len(train) == c.n_train_tasks and len(test) == c.n_test_tasks:
            return
        what = f"{c.n_way} classes with {c.train_shots}+{c.test_shots} images each"
        if eligible is not None:
            raise DataError(
                f"{c.dataset}: {eligible} groups (alphabets) have {what}, but n_train_tasks + "
                f"n_test_tasks = {c.n_train_tasks} + {c.n_test_tasks} asks for "
                f"{c.n_train_tasks + c.n_test_tasks}; lower them (their sum at most {eligible})")
        raise DataError(f"{c.dataset}: the train split has {len(train)} and the test split "
                        f"{len(test)} groups with {what}; n_train_tasks={c.n_train_tasks} and "
                        f"n_test_tasks={c.n_test_tasks} ask for more; lower them")

    def val_tasks(self) -> Sequence[Task]:
        """The validation tasks (built on first use): held-out groups (multi-shot) or
        ``val_tasks`` episodes of the validation classes (few-shot)."""
        try:
            tasks = self._val()
        except DataError as error:
            raise DataError(f"val_every={self.val_every}: no validation tasks ({error})"
                            ) from None
        if not tasks:
            raise DataError(f"val_every={self.val_every}: {self.config.dataset} leaves no "
                            "validation tasks (every group went to training or testing); "
                            "lower n_train_tasks or n_test_tasks, or set val_every=0")
        self._val = lambda: tasks
        return tasks

    def build_learner(self, method: str) -> MetaLearner:
        c = self.config
        torch.manual_seed(c.seed)
        spec = METHODS[method]
        if c.model:
            model = _user_model(c, self.feature_shape, spec.needs_warps)
        else:
            channels, size = self.feature_shape[0], self.feature_shape[-1]
            model = conv4(
                c.n_way, in_channels=channels, image_size=size, filters=c.filters,
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
