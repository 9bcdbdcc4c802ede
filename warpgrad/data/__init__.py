"""Data for meta-learning: datasets of labelled classes, splits, and task samplers.

Every loader returns a :class:`ClassDataset`: uint8 images ``[N, C, H, W]`` (C=1 for
Omniglot and glyphs, strokes bright on a dark background; C=3 for the ImageNet variants),
int64 labels ``[N]``, class names and, where the data has them, an alphabet per class.
Samplers turn a dataset into :class:`warpgrad.tasks.base.Task` objects holding float32
images in [0, 1] and labels remapped to ``0..n_way-1``.

Quick start (the embedded glyphs dataset is rendered from matplotlib's fonts on first use
and cached under ``$WARPGRAD_CACHE`` or ``~/.cache/warpgrad``)::

    import torch
    from warpgrad.data import AlphabetTasks, FewShotSampler, load_glyphs, split_by_alphabet

    glyphs = load_glyphs()
    splits = split_by_alphabet(glyphs, seed=0)           # record: splits.record (JSON-safe)
    episode = FewShotSampler(splits.train, n_way=5, k_shot=1, k_query=15).sample(
        torch.Generator().manual_seed(0))                # 5-way 1-shot Task
    alphabet_task = AlphabetTasks(glyphs, seed=0).train[0]   # 20-way multi-shot Task

Real datasets (downloaded by the user): :func:`load_omniglot`, :func:`load_mini_imagenet`,
:func:`load_tiered_imagenet`; your own images in class folders: :func:`load_folder`; any
tensors or ``torch.utils.data.Dataset``: :meth:`ClassDataset.from_tensors` /
:meth:`ClassDataset.from_dataset`. Bad input raises :class:`DataError` naming the file.
"""

from importlib import import_module
from typing import Any

from .errors import DataError

# Imported on first use (the `warpgrad` command imports DataError without loading torch).
_HOMES = {
    "._cache": ("default_cache_dir",),
    ".augment": ("RandomAffine",),
    ".contact": ("contact_sheet",),
    ".dataset": ("ClassDataset", "DatasetSplits", "rotate_classes", "split_by_alphabet",
                 "split_by_class", "split_from_record"),
    ".folder": ("load_folder",),
    ".glyphs": ("GlyphRecipe", "load_glyphs"),
    ".imagenet": ("load_mini_imagenet", "load_tiered_imagenet"),
    ".omniglot": ("OMNIGLOT_SUBSETS", "load_omniglot", "omniglot_standard_split"),
    ".sampling": ("AlphabetTasks", "FewShotSampler", "nearest_neighbour_accuracy",
                  "to_float"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _HOME_OF:
        return getattr(import_module(_HOME_OF[name], __name__), name)
    raise AttributeError(f"module 'warpgrad.data' has no attribute {name!r}")


__all__ = [
    "OMNIGLOT_SUBSETS",
    "AlphabetTasks",
    "ClassDataset",
    "DataError",
    "DatasetSplits",
    "FewShotSampler",
    "GlyphRecipe",
    "RandomAffine",
    "contact_sheet",
    "default_cache_dir",
    "load_folder",
    "load_glyphs",
    "load_mini_imagenet",
    "load_omniglot",
    "load_tiered_imagenet",
    "nearest_neighbour_accuracy",
    "omniglot_standard_split",
    "rotate_classes",
    "split_by_alphabet",
    "split_by_class",
    "split_from_record",
    "to_float",
]
