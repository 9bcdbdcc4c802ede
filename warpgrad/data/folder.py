"""Your own images in the common class-per-folder layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._cache import cache_key, load_npz, resolve_cache_dir, save_npz
from ._decode import decode_image, read_file
from .dataset import ClassDataset
from .errors import DataError

__all__ = ["IMAGE_SUFFIXES", "load_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_VERSION = 1

_LAYOUT = ("expected <root>/<class>/<image> (classes) or <root>/<group>/<class>/<image> "
           f"(groups of classes), images ending in {', '.join(IMAGE_SUFFIXES)}")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _scan(root: Path) -> tuple[list[tuple[str | None, str, list[Path]]], bool]:
    """``([(group, class, images)], grouped)``: the classes in sorted order."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; {_LAYOUT}")
    top = _visible_dirs(root)
    if not top:
        raise DataError(f"{root} has no class folders; {_LAYOUT}")
    flat = [d for d in top if _images_in(d)]
    if flat and len(flat) != len(top) and any(_visible_dirs(d) for d in top):
        raise DataError(f"{root} mixes class folders (e.g. {flat[0].name}) and group folders; "
                        f"{_LAYOUT}")
    if flat:
        return [(None, d.name, _images_in(d)) for d in top if _images_in(d)], False
    classes = [(g.name, c.name, _images_in(c)) for g in top for c in _visible_dirs(g)
               if _images_in(c)]
    if not classes:
        raise DataError(f"no images found under {root}; {_LAYOUT}")
    return classes, True


def load_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> ClassDataset:
    """Images in class folders, ``<root>/<class>/*.png`` (any of :data:`IMAGE_SUFFIXES`),
    or grouped, ``<root>/<group>/<class>/*.png``.

    Classes are named ``"<class>"`` (``"<group>/<class>"`` when grouped) and, when grouped,
    keep their group as ``alphabets`` (the multi-shot protocol makes each group one task).
    Every image is decoded once, resized to ``image_size x image_size`` (aspect ratio not
    kept) and cached in ``<cache_dir>/folder/``, keyed by the files' paths, sizes and
    modification times. Colours are kept: ``images`` is uint8 ``[N, 3, S, S]``, or
    ``[N, 1, S, S]`` when every image is grey. Files with other suffixes are ignored; an
    image that does not decode raises :class:`DataError` naming it.
    """
    root = Path(root).expanduser()
    classes, grouped = _scan(root)
    spec = {"root": str(root.resolve()), "image_size": image_size, "version": _VERSION,
            "files": [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns]
                      for _, _, files in classes for p in files]}
    path = resolve_cache_dir(cache_dir) / "folder" / f"{root.name}-{cache_key(spec)}.npz"
    arrays = load_npz(path) if use_cache else None
    if arrays is None:
        arrays = _decode_all(classes, grouped, image_size)
        if use_cache:
            save_npz(path, arrays)
    groups = arrays.get("groups")
    return ClassDataset(arrays["images"], arrays["labels"],
                        [str(x) for x in arrays["class_names"]],
                        None if groups is None else [str(x) for x in groups],
                        name=root.name, meta={"root": str(root), "cache_path": str(path)})


def _decode_all(classes: list[tuple[str | None, str, list[Path]]], grouped: bool, size: int
                ) -> dict[str, np.ndarray]:
    n = sum(len(files) for _, _, files in classes)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    i = 0
    for label, (_, _, files) in enumerate(classes):
        for file in files:
            images[i] = decode_image(read_file(file), str(file), "RGB", size).transpose(2, 0, 1)
            labels[i] = label
            i += 1
    grey = bool((images[:, :1] == images[:, 1:]).all())
    arrays = {"images": np.ascontiguousarray(images[:, :1]) if grey else images,
              "labels": labels,
              "class_names": np.array([f"{g}/{c}" if grouped else c for g, c, _ in classes])}
    if grouped:
        arrays["groups"] = np.array([g for g, _, _ in classes])
    return arrays
