"""The in-memory dataset every loader returns, its meta-train/val/test splits, and rotations."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

__all__ = [
    "ClassDataset",
    "DatasetSplits",
    "rotate_classes",
    "split_by_alphabet",
    "split_by_class",
    "split_from_record",
]

Sizes = tuple[float, float, float]


@dataclass(eq=False)
class ClassDataset:
    """Labelled images of many classes, held in memory (or memory-mapped) as uint8.

    Args:
        images: uint8 ``[N, C, H, W]`` (numpy arrays are wrapped without a copy; a
            non-contiguous view, e.g. an NHWC array permuted to NCHW, is fine).
        labels: int64 ``[N]``, class ids ``0..num_classes-1`` indexing ``class_names``.
        class_names: one unique name per class.
        alphabets: optional alphabet (group) name per class, for splits and alphabet tasks.
        name: the dataset's name (``"omniglot"``, ``"glyphs"``, ...), recorded with splits.
        meta: optional extra per-class lists (e.g. ``"subset"``, ``"block"``) and facts.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    alphabets: list[str] | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(self.images)
        if isinstance(self.labels, np.ndarray):
            self.labels = torch.from_numpy(np.asarray(self.labels, dtype=np.int64))
        self.labels = self.labels.to(torch.int64)
        self.class_names = list(self.class_names)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise ValueError(
                f"labels must be [N] with N={len(self.images)}, got {tuple(self.labels.shape)}"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names must be unique")
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(f"labels must lie in 0..{len(self.class_names) - 1}")
        if self.alphabets is not None:
            self.alphabets = list(self.alphabets)
            if len(self.alphabets) != len(self.class_names):
                raise ValueError("alphabets needs one entry per class")
        labels = self.labels.cpu()  # index bookkeeping stays on the CPU
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=len(self.class_names))
        self._order = order
        self._counts = counts
        self._offsets = torch.cumsum(counts, 0) - counts

    # -- sizes -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def counts(self) -> Tensor:
        """int64 ``[num_classes]``: images per class."""
        return self._counts

    def class_indices(self, c: int) -> Tensor:
        """Indices (into ``images``, on the CPU) of class ``c``'s images, in storage order."""
        start = int(self._offsets[c])
        return self._order[start : start + int(self._counts[c])]

    def alphabet_names(self) -> list[str]:
        """Sorted unique alphabet names (empty if the dataset has none)."""
        return sorted(set(self.alphabets)) if self.alphabets is not None else []

    def classes_of(self, alphabet: str) -> list[int]:
        """Class ids of ``alphabet``'s characters, in class-id order."""
        if self.alphabets is None:
            raise DataError(f"dataset {self.name!r} has no alphabets")
        return [c for c, a in enumerate(self.alphabets) if a == alphabet]

    # -- selection ---------------------------------------------------------------------------
    def subset(self, classes: Sequence[int]) -> ClassDataset:
        """A new dataset with only ``classes`` (relabelled ``0..k-1`` in the given order)."""
        classes = [int(c) for c in classes]
        if not classes:
            raise ValueError("subset needs at least one class")
        index = torch.cat([self.class_indices(c) for c in classes])
        new_label = torch.full((self.num_classes,), -1, dtype=torch.int64)
        new_label[torch.tensor(classes)] = torch.arange(len(classes))
        meta = {
            k: [v[c] for c in classes] if _per_class(v, self.num_classes) else v
            for k, v in self.meta.items()
        }
        return ClassDataset(
            images=self.images[index],
            labels=new_label[self.labels.cpu()[index]],
            class_names=[self.class_names[c] for c in classes],
            alphabets=None if self.alphabets is None else [self.alphabets[c] for c in classes],
            name=self.name,
            meta=meta,
        )

    def subset_names(self, names: Sequence[str]) -> ClassDataset:
        """:meth:`subset` by class name."""
        lookup = {n: i for i, n in enumerate(self.class_names)}
        missing = [n for n in names if n not in lookup]
        if missing:
            raise DataError(f"classes not in dataset {self.name!r}: {missing[:5]}")
        return self.subset([lookup[n] for n in names])

    def to(self, device: str | torch.device) -> ClassDataset:
        """The same dataset with ``images`` and ``labels`` on ``device`` (shares meta)."""
        return ClassDataset(self.images.to(device), self.labels.to(device), self.class_names,
                            self.alphabets, self.name, self.meta)

    def __repr__(self) -> str:
        n_alpha = len(self.alphabet_names())
        return (f"ClassDataset({self.name!r}, images={tuple(self.images.shape)}, "
                f"classes={self.num_classes}, alphabets={n_alpha})")


def _per_class(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n


@dataclass
class DatasetSplits:
    """Meta-train / meta-validation / meta-test datasets and the record that reproduces them.

    ``record`` is a plain dict (``by``, ``seed``, ``dataset``, and the class or alphabet names
    of each split), safe to save as JSON; :func:`split_from_record` rebuilds the splits.
    """

    train: ClassDataset
    val: ClassDataset
    test: ClassDataset
    record: dict[str, Any]

    def __getitem__(self, split: str) -> ClassDataset:
        return {"train": self.train, "val": self.val, "test": self.test}[split]

    def to_json(self) -> str:
        return json.dumps(self.record, indent=1)


def _split_sizes(n: int, sizes: Sequence[float]) -> tuple[int, int, int]:
    if len(sizes) != 3:
        raise ValueError(f"sizes must be (train, val, test), got {sizes!r}")
    if all(isinstance(s, int) for s in sizes):
        n_train, n_val, n_test = (int(s) for s in sizes)
        if n_train < 0:  # -1: the rest
            n_train = n - n_val - n_test
    else:
        total = float(sum(sizes))
        n_val = round(n * sizes[1] / total)
        n_test = round(n * sizes[2] / total)
        if sizes[1] > 0:
            n_val = max(n_val, 1)
        if sizes[2] > 0:
            n_test = max(n_test, 1)
        n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 0 or n_train + n_val + n_test > n:
        raise DataError(f"cannot split {n} items into train/val/test sizes {tuple(sizes)}")
    return n_train, n_val, n_test


def _shuffled_split(names: Sequence[str], sizes: Sequence[float], seed: int):
    names = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in perm]
    n_train, n_val, n_test = _split_sizes(len(names), sizes)
    return (
        sorted(shuffled[:n_train]),
        sorted(shuffled[n_train : n_train + n_val]),
        sorted(shuffled[n_train + n_val : n_train + n_val + n_test]),
    )


def split_by_alphabet(
    dataset: ClassDataset, sizes: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> DatasetSplits:
    """Split whole alphabets into meta-train/val/test (no alphabet is shared between splits).

    ``sizes`` are fractions (floats) or alphabet counts (ints; a train count of -1 means "the
    rest"). Alphabet names are sorted before a seeded shuffle, so the split does not depend on
    the filesystem.
    """
    if dataset.alphabets is None:
        raise DataError(f"dataset {dataset.name!r} has no alphabets; use split_by_class")
    train, val, test = _shuffled_split(dataset.alphabet_names(), sizes, seed)
    record = {"by": "alphabet", "seed": seed, "dataset": dataset.name,
              "train": train, "val": val, "test": test}
    return split_from_record(dataset, record)


def split_by_class(
    dataset: ClassDataset, sizes: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> DatasetSplits:
    """Split classes into meta-train/val/test by a seeded shuffle of the sorted class names."""
    train, val, test = _shuffled_split(dataset.class_names, sizes, seed)
    record = {"by": "class", "seed": seed, "dataset": dataset.name,
              "train": train, "val": val, "test": test}
    return split_from_record(dataset, record)


def split_from_record(dataset: ClassDataset, record: Mapping[str, Any]) -> DatasetSplits:
    """Rebuild the splits a record (from :func:`split_by_alphabet`/``_by_class``) describes."""
    by: Literal["alphabet", "class"] = record.get("by", "class")
    parts = {}
    for split in ("train", "val", "test"):
        names = list(record.get(split, []))
        if by == "alphabet":
            known = set(dataset.alphabet_names())
            missing = [a for a in names if a not in known]
            if missing:
                raise DataError(f"alphabets not in dataset {dataset.name!r}: {missing[:5]}")
            chosen = set(names)
            classes = [c for c, a in enumerate(dataset.alphabets or []) if a in chosen]
        elif by == "class":
            lookup = {n: i for i, n in enumerate(dataset.class_names)}
            missing = [n for n in names if n not in lookup]
            if missing:
                raise DataError(f"classes not in dataset {dataset.name!r}: {missing[:5]}")
            classes = sorted(lookup[n] for n in names)
        else:
            raise DataError(f"split record has unknown 'by': {by!r}")
        parts[split] = _subset_or_empty(dataset, classes)
    return DatasetSplits(parts["train"], parts["val"], parts["test"], dict(record))


def _subset_or_empty(dataset: ClassDataset, classes: list[int]) -> ClassDataset:
    if classes:
        return dataset.subset(classes)
    c, h, w = dataset.image_shape
    return ClassDataset(torch.empty(0, c, h, w, dtype=torch.uint8),
                        torch.empty(0, dtype=torch.int64), [],
                        None if dataset.alphabets is None else [], dataset.name)


def rotate_classes(
    dataset: ClassDataset, angles: Sequence[int] = (0, 90, 180, 270)
) -> ClassDataset:
    """Each class rotated by each angle becomes its own class (``len(angles)`` x classes).

    Class ``c`` rotated by ``angles[j]`` gets id ``c * len(angles) + j`` and name
    ``"<name>@<angle>"`` (angle 0 keeps the plain name); it keeps its alphabet. Split first
    and rotate each split, so rotated copies of a class never land in different splits.
    """
    if any(a % 90 for a in angles) or len(set(angles)) != len(angles):
        raise ValueError(f"angles must be distinct multiples of 90, got {tuple(angles)}")
    h, w = dataset.images.shape[-2:]
    if h != w and any(a % 180 for a in angles):
        raise ValueError("90-degree rotations need square images")
    r = len(angles)
    images = torch.cat([torch.rot90(dataset.images, k=(a // 90) % 4, dims=(-2, -1))
                        for a in angles])
    labels = torch.cat([dataset.labels * r + j for j in range(r)])
    names = [n if a == 0 else f"{n}@{a}" for n in dataset.class_names for a in angles]
    alphabets = None if dataset.alphabets is None else [
        al for al in dataset.alphabets for _ in angles]
    meta = {k: [x for x in v for _ in angles] if _per_class(v, dataset.num_classes) else v
            for k, v in dataset.meta.items()}
    return ClassDataset(images, labels, names, alphabets, dataset.name, meta)
