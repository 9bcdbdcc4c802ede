"""The dataset every loader returns, its meta-train/val/test splits, and rotations."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    """Labelled examples of many classes, held in memory or memory-mapped.

    Args:
        images: the features, ``[N, ...]``: uint8 images ``[N, C, H, W]`` (what the loaders
            give; tasks scale them to [0, 1]) or features of any shape and floating dtype
            (float vectors ``[N, D]``, signals ``[N, C, T]``; tasks get them as float32,
            unscaled). Numpy arrays are wrapped without a copy; a non-contiguous view, e.g. an
            NHWC array permuted to NCHW, is fine. :meth:`from_tensors` and
            :meth:`from_dataset` build one from arbitrary labels.
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
        if self.images.dim() < 2 or not (self.images.dtype == torch.uint8
                                         or self.images.is_floating_point()):
            raise ValueError(
                f"images must be uint8 [N, C, H, W] or floating-point features [N, ...], got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
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
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``(C, H, W)`` for images, ``(D,)`` for vectors..."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def is_images(self) -> bool:
        """uint8 ``[N, C, H, W]``: what augmentation, contact sheets and conv4 expect."""
        return self.images.dtype == torch.uint8 and self.images.dim() == 4

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` (images only; :attr:`feature_shape` for any features)."""
        if self.images.dim() != 4:
            raise DataError(f"dataset {self.name!r} holds features of shape "
                            f"{self.feature_shape}, not images [C, H, W]")
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    # -- construction from arbitrary data ------------------------------------------------------
    @classmethod
    def from_tensors(cls, x: Tensor | np.ndarray, y: Sequence[Any] | Tensor | np.ndarray, *,
                     groups: Mapping[Any, str] | None = None, name: str = "",
                     ) -> ClassDataset:
        """A dataset from features ``x [N, ...]`` and labels ``y [N]`` of any kind.

        ``x``: uint8 images ``[N, C, H, W]`` or floating-point features of any shape
        (integer features are converted to float32). ``y``: ints or strings; the classes are
        the sorted distinct labels, named by ``str(label)``. ``groups`` (optional) maps each
        label to a group name: the groups are the multi-shot tasks (as alphabets are for
        Omniglot) and the few-shot splits stay within them.
        """
        x = torch.from_numpy(np.asarray(x)) if not isinstance(x, Tensor) else x
        if x.dtype != torch.uint8 and not x.is_floating_point():
            x = x.to(torch.float32)
        keys = _label_keys(y)
        if len(keys) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(keys)} labels")
        classes = sorted(set(keys), key=_sort_key)
        lookup = {k: i for i, k in enumerate(classes)}
        labels = torch.tensor([lookup[k] for k in keys], dtype=torch.int64)
        alphabets = None
        if groups is not None:
            missing = [k for k in classes if k not in groups]
            if missing:
                raise ValueError(f"groups has no entry for labels {missing[:5]}")
            alphabets = [str(groups[k]) for k in classes]
        return cls(x, labels, [str(k) for k in classes], alphabets, name)

    @classmethod
    def from_dataset(cls, dataset: Iterable[tuple[Any, Any]], *, groups: Mapping[Any, str]
                     | None = None, name: str = "", memmap: str | os.PathLike[str] | None = None
                     ) -> ClassDataset:
        """A dataset from a ``torch.utils.data.Dataset`` (or any sized iterable) of
        ``(features, label)`` pairs, read once in order.

        Without ``memmap`` the features are stacked in memory. With ``memmap`` (a ``.npy``
        path) they are written there one example at a time and memory-mapped, so the
        dataset needs disk, not memory, for its features (labels stay in memory): a task
        reads only its own rows. The file is written atomically and reused as it is when it
        already exists with the dataset's length (delete it when the source changes).
        ``groups`` and label handling as in :meth:`from_tensors`.
        """
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("from_dataset needs a non-empty dataset")
        labels: list[Any] = []
        if memmap is None:
            features = []
            for x, y in dataset:
                features.append(torch.as_tensor(x))
                labels.append(_label_key(y))
            return cls.from_tensors(torch.stack(features), labels, groups=groups, name=name)
        path = Path(memmap)
        stored = _open_memmap(path, n)
        if stored is not None:
            labels = [_label_key(y) for _, y in dataset]
        else:
            tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
            try:
                array = None
                for i, (x, y) in enumerate(dataset):
                    labels.append(_label_key(y))
                    row = np.asarray(torch.as_tensor(x))
                    if array is None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=row.dtype,
                                                          shape=(n, *row.shape))
                    array[i] = row
                array.flush()
                del array
                os.replace(tmp, path)  # only a complete file ever has the final name
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            stored = _open_memmap(path, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # copy-on-write maps are "writable"
            x = torch.from_numpy(stored)
        return cls.from_tensors(x, labels, groups=groups, name=name)

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
        return (f"ClassDataset({self.name!r}, images={tuple(self.images.shape)} "
                f"{str(self.images.dtype).removeprefix('torch.')}, "
                f"classes={self.num_classes}, alphabets={n_alpha})")


def _label_key(y: Any) -> Any:
    """A hashable, sortable label: a Python int for integer tensors/arrays, else ``str``."""
    if isinstance(y, (Tensor, np.ndarray, np.generic)):
        y = y.item()
    return y if isinstance(y, int) else str(y)


def _label_keys(y: Any) -> list[Any]:
    if isinstance(y, (Tensor, np.ndarray)):
        return [_label_key(v) for v in y.tolist()]
    return [_label_key(v) for v in y]


def _sort_key(key: Any) -> tuple[int, Any]:
    return (0, key) if isinstance(key, int) else (1, key)


def _open_memmap(path: Path, n: int) -> np.ndarray | None:
    """The ``.npy`` at ``path`` memory-mapped copy-on-write, if it holds ``n`` rows."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read memory-mapped features {path}: {exc}") from exc
    if len(array) != n:
        raise DataError(f"{path} holds {len(array)} examples, the dataset {n}; delete it to "
                        "rebuild it")
    return array


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
    return ClassDataset(dataset.images.new_empty((0, *dataset.feature_shape)),
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
