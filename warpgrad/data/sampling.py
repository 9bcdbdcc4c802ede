"""Task samplers: N-way K-shot episodes and the multi-shot one-task-per-alphabet protocol.

Both return :class:`warpgrad.tasks.base.Task` objects. Sampling is index arithmetic on the
dataset's in-memory uint8 tensor, seeded by a :class:`torch.Generator` (few-shot) or by the
sampler's seed (alphabet tasks), so equal seeds give equal tasks.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._stats import mean_ci
from ..tasks.base import Task, Transform
from .augment import RandomAffine
from .dataset import ClassDataset
from .errors import DataError

__all__ = ["AlphabetTasks", "FewShotSampler", "nearest_neighbour_accuracy", "to_float"]


def to_float(images: Tensor, device: str | torch.device = "cpu") -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 in [0, 1] on ``device`` (moved before converting);
    floating-point features -> float32 as they are."""
    if images.is_floating_point():
        return images.to(device=device, dtype=torch.float32).contiguous()
    return images.to(device).contiguous().to(torch.float32).div_(255.0)


def _gather(dataset: ClassDataset, index: Tensor, device: str | torch.device) -> Tensor:
    return to_float(dataset.images[index.to(dataset.images.device)], device)


class FewShotSampler:
    """N-way K-shot episodes with ``k_query`` query images per class.

    Each episode draws ``n_way`` distinct classes (among those with at least ``k_shot +
    k_query`` images) and, per class, ``k_shot + k_query`` distinct images. Labels are
    ``0..n_way-1`` in the order the classes were drawn. Tensors are class-major:
    ``x_train [n_way*k_shot, C, H, W]`` float32 in [0, 1], ``y_train [n_way*k_shot]`` int64,
    and the same for the query set ``x_test``/``y_test`` (``n_way*k_query`` rows).

    The returned :class:`Task` has ``batch_size=None`` (the whole support set every step)
    and ``meta_split="test"`` (meta-objectives use the query set).

    Args:
        dataset: the split to draw from (e.g. ``splits.train``).
        n_way, k_shot, k_query: classes per episode, support and query images per class.
        device: where the task's tensors live.
        transform: optional batched augmentation stored on the task.
        seed: seeds the sampler's own generator, used when :meth:`sample` gets none.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        n_way: int = 5,
        k_shot: int = 1,
        k_query: int = 15,
        *,
        device: str | torch.device = "cpu",
        transform: Transform | None = None,
        seed: int = 0,
    ) -> None:
        if n_way < 1 or k_shot < 1 or k_query < 0:
            raise ValueError(
                f"need n_way>=1, k_shot>=1, k_query>=0; got {n_way}, {k_shot}, {k_query}")
        self.dataset = dataset
        self.n_way, self.k_shot, self.k_query = n_way, k_shot, k_query
        self.device = torch.device(device)
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)
        per_class = k_shot + k_query
        self._eligible = torch.nonzero(dataset.counts >= per_class).flatten()
        if len(self._eligible) < n_way:
            raise DataError(
                f"{dataset.name or 'dataset'} has {len(self._eligible)} classes with at least "
                f"{per_class} images; a {n_way}-way episode needs {n_way}"
            )

    def sample_indices(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(classes [n_way], index [n_way, k_shot + k_query])``: dataset class ids and
        image indices of one episode."""
        g = self.generator if generator is None else generator
        pick = torch.randperm(len(self._eligible), generator=g)[: self.n_way]
        classes = self._eligible[pick]
        counts = self.dataset.counts[classes]
        width = int(counts.max())
        keys = torch.rand(self.n_way, width, generator=g)
        keys[torch.arange(width) >= counts[:, None]] = 2.0  # never pick past a class's end
        pos = torch.topk(keys, self.k_shot + self.k_query, dim=1, largest=False).indices
        index = self.dataset._order[self.dataset._offsets[classes][:, None] + pos]
        return classes, index

    def sample(self, generator: torch.Generator | None = None) -> Task:
        """One episode as a :class:`Task` (uses the sampler's generator if none is given)."""
        _, index = self.sample_indices(generator)
        k = self.k_shot
        n = self.n_way
        x_train = _gather(self.dataset, index[:, :k].reshape(-1), self.device)
        x_test = _gather(self.dataset, index[:, k:].reshape(-1), self.device)
        labels = torch.arange(n, device=self.device)
        return Task(
            x_train=x_train,
            y_train=labels.repeat_interleave(k),
            x_test=x_test,
            y_test=labels.repeat_interleave(self.k_query),
            batch_size=None,
            meta_split="test",
            transform=self.transform,
        )

    def sample_batch(self, n_tasks: int, generator: torch.Generator | None = None) -> list[Task]:
        """A meta-batch of ``n_tasks`` episodes."""
        return [self.sample(generator) for _ in range(n_tasks)]

    def episodes(self, n_tasks: int, seed: int) -> list[Task]:
        """A fixed list of episodes from a fresh generator seeded with ``seed`` (evaluation)."""
        g = torch.Generator().manual_seed(seed)
        return [self.sample(g) for _ in range(n_tasks)]


def _alphabet_rng(seed: int, alphabet: str) -> np.random.Generator:
    # per-alphabet stream: adding or removing alphabets leaves the others' tasks unchanged
    return np.random.default_rng([seed, zlib.crc32(alphabet.encode())])


class AlphabetTasks:
    """The Leap/WarpGrad multi-shot protocol: each alphabet is one fixed ``n_way`` task.

    Alphabets with at least ``n_way`` characters that have ``train_shots + test_shots``
    images are eligible. Per alphabet, ``n_way`` characters are chosen by a seeded shuffle of
    its sorted characters (label ``i`` = the ``i``-th chosen character), and per character
    ``train_shots`` images train and ``test_shots`` are held out, by a seeded shuffle. The
    eligible alphabets, sorted then shuffled by ``seed``, go: the first ``n_train_tasks`` to
    ``train``, the next ``n_test_tasks`` to ``test``, the rest to ``val``.

    Each :class:`Task` holds ``x_train [n_way*train_shots, C, H, W]`` and ``x_test
    [n_way*test_shots, C, H, W]`` (float32 in [0, 1]), ``batch_size`` (default 128, drawn with
    replacement), ``meta_split="train"`` and the augmentation (default :class:`RandomAffine`
    with rotation 0-360, translate 0.2, scale 0.8-1.2; ``augment=False`` for none).

    Attributes:
        train, val, test: lists of tasks; ``alphabets[split]`` names their alphabets.
        classes: ``{alphabet: [class names in label order]}``.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        *,
        n_way: int = 20,
        train_shots: int = 15,
        test_shots: int = 5,
        batch_size: int | None = 128,
        n_train_tasks: int = 30,
        n_test_tasks: int = 10,
        augment: bool | Transform = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if dataset.alphabets is None:
            raise DataError(f"dataset {dataset.name!r} has no alphabets")
        self.dataset = dataset
        self.n_way, self.train_shots, self.test_shots = n_way, train_shots, test_shots
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        if augment is True:
            self.transform: Transform | None = RandomAffine()
        elif augment is False or augment is None:
            self.transform = None
        else:
            self.transform = augment
        per_class = train_shots + test_shots
        counts = dataset.counts
        eligible = []
        for alphabet in dataset.alphabet_names():
            chars = [c for c in dataset.classes_of(alphabet) if int(counts[c]) >= per_class]
            if len(chars) >= n_way:
                eligible.append(alphabet)
        if not eligible:
            raise DataError(
                f"no alphabet in {dataset.name!r} has {n_way} characters with {per_class} images")
        order = [eligible[i] for i in np.random.default_rng(seed).permutation(len(eligible))]
        n_train = min(n_train_tasks, len(order))
        n_test = min(n_test_tasks, len(order) - n_train)
        self.alphabets: dict[str, list[str]] = {
            "train": order[:n_train],
            "test": order[n_train : n_train + n_test],
            "val": order[n_train + n_test :],
        }
        self.classes: dict[str, list[str]] = {}
        self._tasks: dict[str, Task] = {}
        for alphabet in order:
            self._tasks[alphabet] = self._build(alphabet)
        self.train = [self._tasks[a] for a in self.alphabets["train"]]
        self.val = [self._tasks[a] for a in self.alphabets["val"]]
        self.test = [self._tasks[a] for a in self.alphabets["test"]]

    def _build(self, alphabet: str) -> Task:
        ds = self.dataset
        rng = _alphabet_rng(self.seed, alphabet)
        per_class = self.train_shots + self.test_shots
        chars = sorted((c for c in ds.classes_of(alphabet) if int(ds.counts[c]) >= per_class),
                       key=lambda c: ds.class_names[c])
        chosen = [chars[i] for i in rng.permutation(len(chars))[: self.n_way]]
        self.classes[alphabet] = [ds.class_names[c] for c in chosen]
        classes = torch.tensor(chosen)
        counts = ds.counts[classes].numpy()
        width = int(counts.max())
        keys = rng.random((self.n_way, width))
        keys[np.arange(width)[None, :] >= counts[:, None]] = 2.0
        pos = torch.from_numpy(np.argsort(keys, axis=1, kind="stable")[:, :per_class])
        index = ds._order[ds._offsets[classes][:, None] + pos]
        labels = torch.arange(self.n_way, device=self.device)
        return Task(
            x_train=_gather(ds, index[:, : self.train_shots].reshape(-1), self.device),
            y_train=labels.repeat_interleave(self.train_shots),
            x_test=_gather(ds, index[:, self.train_shots :].reshape(-1), self.device),
            y_test=labels.repeat_interleave(self.test_shots),
            batch_size=self.batch_size,
            meta_split="train",
            transform=self.transform,
            key=alphabet,
        )

    def task(self, alphabet: str) -> Task:
        """The task of one alphabet (any split)."""
        try:
            return self._tasks[alphabet]
        except KeyError:
            raise DataError(f"no task for alphabet {alphabet!r}") from None

    def __len__(self) -> int:
        return len(self._tasks)

    def record(self) -> dict[str, Any]:
        """The protocol as a JSON-safe dict: seed, sizes, alphabets per split, and classes."""
        return {
            "protocol": "alphabet_tasks",
            "dataset": self.dataset.name,
            "seed": self.seed,
            "n_way": self.n_way,
            "train_shots": self.train_shots,
            "test_shots": self.test_shots,
            "batch_size": self.batch_size,
            "augment": repr(self.transform),
            **{split: list(names) for split, names in self.alphabets.items()},
            "classes": {a: list(c) for a, c in self.classes.items()},
        }


def nearest_neighbour_accuracy(
    sampler: FewShotSampler, n_tasks: int = 500, seed: int = 0
) -> tuple[float, float]:
    """Pixel-space 1-nearest-neighbour accuracy over ``n_tasks`` episodes (a sanity figure).

    Each query is labelled by its nearest support image in Euclidean pixel distance.
    Returns ``(mean accuracy, 95% confidence half-width)``, both fractions.
    """
    accs = []
    for task in sampler.episodes(n_tasks, seed):
        support = task.x_train.flatten(1)
        query = task.x_test.flatten(1)
        nearest = torch.cdist(query, support).argmin(dim=1)
        accs.append((task.y_train[nearest] == task.y_test).float().mean().item())
    summary = mean_ci(accs)
    return summary["mean"], summary["ci95"]

