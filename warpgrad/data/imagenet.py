"""miniImageNet and tieredImageNet from their widely used on-disk formats.

Large arrays are used in place: the miniImageNet pickle's ``image_data`` becomes the dataset's
tensor without a copy (an NHWC array viewed as NCHW), tieredImageNet's PNG list is streamed
out of its pickle and decoded into one preallocated array, and the decoded array is cached as
a memory-mapped ``.npy``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._cache import atomic_write, cache_key, resolve_cache_dir
from ._decode import decode_image, load_pickle, read_file, stream_pickled_list
from .dataset import ClassDataset
from .errors import DataError

__all__ = ["load_mini_imagenet", "load_tiered_imagenet"]

_SPLITS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
_VERSION = 1


def _split_name(split: str) -> str:
    s = {"validation": "val", "valid": "val"}.get(split, split)
    if s not in _SPLITS:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return s


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """NHWC uint8 numpy -> NCHW torch view, no copy (read-only arrays are fine: never written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable" arrays
        return torch.from_numpy(array).permute(0, 3, 1, 2)


def _resize_nchw(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(len(images), images.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, len(images), 1024):
        x = images[i : i + 1024].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out[i : i + 1024] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def _load_npy_cache(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        # copy-on-write: pages load lazily, and an in-place write stays private (a read-only
        # map would crash the process on a write through a tensor)
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        warnings.warn(f"ignoring unreadable cache {path} ({exc}); rebuilding it", stacklevel=3)
        return None


def _save_npy_cache(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


# -- miniImageNet ------------------------------------------------------------------------------
def load_mini_imagenet(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    image_size: int = 84,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> ClassDataset:
    """One split of miniImageNet: ``images`` uint8 ``[N, 3, image_size, image_size]``.

    Reads, in this order of preference, from ``root``:

    * the pickle caches ``mini-imagenet-cache-{train,validation,test}.pkl`` (``val`` is also
      accepted), each a dict with ``image_data`` (uint8 ``N x 84 x 84 x 3``) and
      ``class_dict`` (wnid -> image indices); the array is used in place, without a copy;
    * the Ravi & Larochelle layout: ``images/`` plus ``{train,val,test}.csv`` with rows
      ``filename,label``; images are resized to ``image_size`` once and cached (as a
      memory-mapped ``.npy``) in ``<cache_dir>/mini-imagenet/``.

    Classes are the wnids, sorted.
    """
    root = Path(root).expanduser()
    split = _split_name(split)
    pickles = [root / f"mini-imagenet-cache-{s}.pkl" for s in _SPLITS[split]]
    csv_path = root / f"{split}.csv"
    for p in pickles:
        if p.is_file():
            return _mini_from_pickle(p, image_size)
    if csv_path.is_file() and (root / "images").is_dir():
        return _mini_from_csv(root, csv_path, split, image_size, cache_dir, use_cache)
    raise DataError(
        f"miniImageNet {split} split not found under {root}: expected either the pickle "
        f"{' or '.join(p.name for p in pickles)} (a dict with 'image_data', uint8 N x 84 x 84 "
        f"x 3, and 'class_dict', wnid -> indices), or the Ravi & Larochelle layout "
        f"{root}/images/ plus {csv_path.name} (rows 'filename,label')"
    )


def _mini_from_pickle(path: Path, image_size: int) -> ClassDataset:
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with 'image_data' and 'class_dict', "
                        f"got {type(data).__name__}")
    data = {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}
    images, class_dict = data.get("image_data"), data.get("class_dict")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        raise DataError(f"{path}: 'image_data' must be a uint8 array N x H x W x 3, got "
                        f"{getattr(images, 'dtype', type(images).__name__)} "
                        f"{getattr(images, 'shape', '')}")
    if not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f"{path}: 'class_dict' must be a non-empty dict wnid -> indices")
    n = len(images)
    labels = np.full(n, -1, dtype=np.int64)
    names = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in class_dict)
    by_name = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in class_dict.items()}
    for c, name in enumerate(names):
        try:
            idx = np.asarray(by_name[name], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"indices outside 0..{n - 1}")
        except (TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{path}: class_dict[{name!r}] is not a list of image indices: "
                            f"{exc}") from exc
        labels[idx] = c
    if (labels < 0).any():
        raise DataError(f"{path}: {(labels < 0).sum()} images belong to no class in class_dict")
    tensor = _resize_nchw(_as_tensor(images), image_size)
    return ClassDataset(tensor, labels, names, None, "mini-imagenet", {"source": str(path)})


def _mini_from_csv(root: Path, csv_path: Path, split: str, image_size: int,
                   cache_dir: str | os.PathLike[str] | None, use_cache: bool) -> ClassDataset:
    raw = read_file(csv_path)
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot parse {csv_path}: {exc}") from exc
    if rows and [c.strip().lower() for c in rows[0]] == ["filename", "label"]:
        rows = rows[1:]
    rows = [r for r in rows if r]
    bad = [r for r in rows if len(r) != 2]
    if bad or not rows:
        raise DataError(f"{csv_path}: expected rows 'filename,label' after the header, got "
                        f"{bad[0] if bad else 'no rows'}")
    rows = sorted((label.strip(), name.strip()) for name, label in rows)
    names = sorted({label for label, _ in rows})
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[label] for label, _ in rows], dtype=np.int64)
    spec = {"root": str(root.resolve()), "split": split, "size": image_size,
            "csv": hashlib.sha256(raw).hexdigest(), "version": _VERSION}
    path = resolve_cache_dir(cache_dir) / "mini-imagenet" / f"mini-{split}-{cache_key(spec)}.npy"
    images = _load_npy_cache(path) if use_cache else None
    if images is None or images.shape != (len(rows), image_size, image_size, 3):
        images = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)
        for i, (_, name) in enumerate(rows):
            file = root / "images" / name
            if not file.is_file():
                raise DataError(f"{csv_path} lists {name}, but {file} does not exist")
            images[i] = decode_image(read_file(file), str(file), "RGB", image_size)
        if use_cache:
            _save_npy_cache(path, images)
    return ClassDataset(_as_tensor(images), labels, names, None, "mini-imagenet",
                        {"source": str(csv_path)})


# -- tieredImageNet ----------------------------------------------------------------------------
def _tiered_labels(path: Path) -> dict[str, Any]:
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with 'label_specific', 'label_general' and "
                        f"their '_str' names, got {type(data).__name__}")
    data = {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}
    need = ["label_specific", "label_specific_str"]
    missing = [k for k in need if k not in data]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; expected 'label_specific', "
                        f"'label_general', 'label_specific_str', 'label_general_str'")
    return data


def load_tiered_imagenet(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    image_size: int = 84,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> ClassDataset:
    """One split of tieredImageNet: ``images`` uint8 ``[N, 3, image_size, image_size]``.

    Reads ``{split}_images_png.pkl`` (a pickled list of PNG-encoded 84x84 images, as bytes or
    uint8 arrays) and ``{split}_labels.pkl`` (``label_specific``, ``label_general`` and their
    ``_str`` names) from ``root``. Classes are the specific labels, named by
    ``label_specific_str``; ``alphabets`` holds each class's general category (for splits or
    tasks by category). The PNGs are streamed out of the pickle and decoded into one
    preallocated array, cached as a memory-mapped ``.npy`` in ``<cache_dir>/tiered-imagenet/``.
    """
    root = Path(root).expanduser()
    split = _split_name(split)
    images_pkl = root / f"{split}_images_png.pkl"
    labels_pkl = root / f"{split}_labels.pkl"
    missing = [p.name for p in (images_pkl, labels_pkl) if not p.is_file()]
    if missing:
        raise DataError(
            f"tieredImageNet {split} split not found under {root}: missing {', '.join(missing)}; "
            f"expected {images_pkl.name} (pickled list of PNG-encoded 84x84 images) and "
            f"{labels_pkl.name} (dict with 'label_specific', 'label_general', "
            f"'label_specific_str', 'label_general_str')"
        )
    info = _tiered_labels(labels_pkl)
    try:
        specific = np.asarray(info["label_specific"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{labels_pkl}: 'label_specific' is not a list of ints: {exc}") from exc
    names = [s.decode() if isinstance(s, bytes) else str(s) for s in info["label_specific_str"]]
    if specific.size == 0 or specific.min() < 0 or specific.max() >= len(names):
        raise DataError(f"{labels_pkl}: 'label_specific' must index 'label_specific_str' "
                        f"({len(names)} names)")
    alphabets = None
    if "label_general" in info and "label_general_str" in info:
        general = np.asarray(info["label_general"], dtype=np.int64).reshape(-1)
        gnames = [s.decode() if isinstance(s, bytes) else str(s)
                  for s in info["label_general_str"]]
        if len(general) == len(specific) and general.size and general.max() < len(gnames):
            first = np.full(len(names), -1)
            first[specific[::-1]] = np.arange(len(specific))[::-1]
            alphabets = [gnames[general[i]] if i >= 0 else "" for i in first]
    n = len(specific)
    st = images_pkl.stat()
    spec = {"root": str(root.resolve()), "split": split, "size": image_size,
            "pkl": [st.st_size, st.st_mtime_ns], "n": n, "version": _VERSION}
    path = resolve_cache_dir(cache_dir) / "tiered-imagenet" / \
        f"tiered-{split}-{cache_key(spec)}.npy"
    images = _load_npy_cache(path) if use_cache else None
    if images is None or images.shape != (n, image_size, image_size, 3):
        images = decode_png_pickle(images_pkl, n, image_size)
        if use_cache:
            _save_npy_cache(path, images)
    if len(set(names)) != len(names):
        names = [f"{nm}#{i}" for i, nm in enumerate(names)]
    return ClassDataset(_as_tensor(images), specific, names, alphabets, "tiered-imagenet",
                        {"source": str(images_pkl)})


def decode_png_pickle(path: Path, n: int, image_size: int = 84) -> np.ndarray:
    """Decode a pickled list of ``n`` encoded images into uint8 ``[n, size, size, 3]``.

    The list is streamed: each PNG is decoded into the preallocated output and dropped, so
    peak memory is the decoded array plus one batch of encoded images.
    """
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    count = [0]

    def start() -> None:
        count[0] = 0

    def sink(item: Any) -> None:
        i = count[0]
        if i >= n:
            raise DataError(f"{path} holds more than the {n} images its labels file lists")
        if isinstance(item, str):
            item = item.encode("latin1")
        if not isinstance(item, (bytes, bytearray, memoryview, np.ndarray)):
            raise DataError(f"{path}: item {i} is a {type(item).__name__}, expected PNG bytes")
        out[i] = decode_image(item, f"{path}[{i}]", "RGB", image_size)
        count[0] = i + 1

    rest = stream_pickled_list(path, sink, start)
    if not isinstance(rest, list) or rest:
        raise DataError(f"{path}: expected a pickled list of PNG-encoded images, got "
                        f"{type(rest).__name__}")
    if count[0] != n:
        raise DataError(f"{path} holds {count[0]} images but its labels file lists {n}")
    return out
