"""Omniglot from its standard on-disk formats (folders or the zip files as distributed)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._cache import cache_key, load_npz, resolve_cache_dir, save_npz
from ._decode import decode_image, open_zip, read_file, read_zip_member
from .dataset import ClassDataset, DatasetSplits, split_from_record
from .errors import DataError

__all__ = ["OMNIGLOT_SUBSETS", "load_omniglot", "omniglot_standard_split"]

OMNIGLOT_SUBSETS = ("images_background", "images_evaluation")
_VERSION = 1

_LAYOUT = (
    "expected, for each subset S in {subsets}, either the folder <root>/S/ holding "
    "<Alphabet>/<characterNN>/<id>.png (105x105 PNGs), or the zip file <root>/S.zip as "
    "distributed (https://github.com/brendenlake/omniglot/tree/master/python)"
)


class _Source:
    """One subset's PNGs: ``(alphabet, character, file name)`` entries and a reader."""

    def __init__(self, root: Path, subset: str) -> None:
        self.subset = subset
        folder, archive = root / subset, root / f"{subset}.zip"
        self.zip: zipfile.ZipFile | None = None
        if folder.is_dir():
            self.path = folder
            self.entries = sorted(
                (a.name, c.name, f.name)
                for a in folder.iterdir() if a.is_dir()
                for c in a.iterdir() if c.is_dir()
                for f in c.iterdir() if f.suffix.lower() == ".png"
            )
            self.fingerprint = [[f"{a}/{c}/{f}", (folder / a / c / f).stat().st_size]
                                for a, c, f in self.entries]
        elif archive.is_file():
            self.path = archive
            self.zip = open_zip(archive)
            self._members = {}
            for info in self.zip.infolist():
                parts = info.filename.strip("/").split("/")
                if parts and parts[0] == subset:
                    parts = parts[1:]
                if len(parts) == 3 and parts[2].lower().endswith(".png") and not info.is_dir():
                    self._members[tuple(parts)] = info.filename
            self.entries = sorted(self._members)
            st = archive.stat()
            self.fingerprint = [archive.name, st.st_size, st.st_mtime_ns]
        else:
            raise FileNotFoundError
        if not self.entries:
            raise DataError(f"no <Alphabet>/<characterNN>/<id>.png files in {self.path}")

    def read(self, entry: tuple[str, str, str]) -> tuple[bytes, str]:
        if self.zip is not None:
            name = self._members[entry]
            return read_zip_member(self.zip, name, self.path), f"{self.path}:{name}"
        path = self.path.joinpath(*entry)
        return read_file(path), str(path)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _open_sources(root: Path, subsets: Sequence[str]) -> list[_Source]:
    layout = _LAYOUT.format(subsets="{" + ", ".join(subsets) + "}")
    if not root.is_dir():
        raise DataError(f"Omniglot root {root} does not exist: {layout}")
    sources, missing = [], []
    for subset in subsets:
        try:
            sources.append(_Source(root, subset))
        except FileNotFoundError:
            missing.append(subset)
    if missing:
        for s in sources:
            s.close()
        found = sorted(p.name for p in root.iterdir())[:10]
        raise DataError(f"Omniglot not found under {root}: missing {', '.join(missing)} "
                        f"(found: {found}); {layout}")
    return sources


def load_omniglot(
    root: str | os.PathLike[str],
    *,
    image_size: int = 28,
    subsets: Sequence[str] = OMNIGLOT_SUBSETS,
    invert: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> ClassDataset:
    """Omniglot's characters as classes (``"<Alphabet>/<characterNN>"``), alphabets kept.

    ``root`` holds ``images_background/`` and ``images_evaluation/`` (or the two ``.zip``
    files as distributed). Images are resized once to ``image_size`` (default 28) and cached
    in ``<cache_dir>/omniglot/``; ``images`` is uint8 ``[N, 1, image_size, image_size]``, with
    strokes 255 on a 0 background when ``invert`` (the default; the PNGs draw black on
    white). ``meta["subset"]`` gives each class's subset.
    """
    root = Path(root).expanduser()
    sources = _open_sources(root, subsets)
    try:
        spec = {"root": str(root.resolve()), "image_size": image_size, "invert": invert,
                "version": _VERSION, "sources": [[s.subset, s.fingerprint] for s in sources]}
        path = resolve_cache_dir(cache_dir) / "omniglot" / f"omniglot-{cache_key(spec)}.npz"
        cached = load_npz(path) if use_cache else None
        if cached is not None:
            return _dataset(cached)
        arrays = _decode_all(sources, image_size, invert)
    finally:
        for s in sources:
            s.close()
    if use_cache:
        save_npz(path, arrays)
    return _dataset(arrays)


def _decode_all(sources: list[_Source], size: int, invert: bool) -> dict[str, np.ndarray]:
    n = sum(len(s.entries) for s in sources)
    images = np.empty((n, 1, size, size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    class_names: list[str] = []
    alphabets: list[str] = []
    class_subsets: list[str] = []
    seen_alphabets: dict[str, str] = {}
    i = 0
    for source in sources:
        current = None
        for entry in source.entries:
            alphabet, character, _ = entry
            if alphabet in seen_alphabets and seen_alphabets[alphabet] != source.subset:
                raise DataError(f"alphabet {alphabet!r} appears in both "
                                f"{seen_alphabets[alphabet]} and {source.subset}")
            seen_alphabets[alphabet] = source.subset
            if (alphabet, character) != current:
                current = (alphabet, character)
                class_names.append(f"{alphabet}/{character}")
                alphabets.append(alphabet)
                class_subsets.append(source.subset)
            data, where = source.read(entry)
            img = decode_image(data, where, "L", size)
            images[i, 0] = 255 - img if invert else img
            labels[i] = len(class_names) - 1
            i += 1
    return {"images": images, "labels": labels, "class_names": np.array(class_names),
            "alphabets": np.array(alphabets), "subsets": np.array(class_subsets)}


def _dataset(arrays: dict[str, np.ndarray]) -> ClassDataset:
    return ClassDataset(
        images=arrays["images"], labels=arrays["labels"],
        class_names=[str(x) for x in arrays["class_names"]],
        alphabets=[str(x) for x in arrays["alphabets"]],
        name="omniglot", meta={"subset": [str(x) for x in arrays["subsets"]]},
    )


def omniglot_standard_split(dataset: ClassDataset, n_val: int = 5, seed: int = 0
                            ) -> DatasetSplits:
    """Background alphabets meta-train (less ``n_val`` of them, seeded, which validate);
    evaluation alphabets meta-test: Lake et al.'s split."""
    subset_of = dict(zip(dataset.alphabets or [], dataset.meta["subset"], strict=True))
    background = sorted(a for a, s in subset_of.items() if s == OMNIGLOT_SUBSETS[0])
    evaluation = sorted(a for a, s in subset_of.items() if s == OMNIGLOT_SUBSETS[1])
    perm = np.random.default_rng(seed).permutation(len(background))
    val = sorted(background[i] for i in perm[:n_val])
    train = sorted(a for a in background if a not in set(val))
    record = {"by": "alphabet", "seed": seed, "dataset": dataset.name, "protocol": "standard",
              "train": train, "val": val, "test": evaluation}
    return split_from_record(dataset, record)
