"""Shared fixtures for the data tests: tiny datasets, and writers for the real datasets'
on-disk formats (so every loader is tested on files it has never seen in memory)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TEST_THREADS

# The tests' models are tiny: one thread is fastest, and it keeps the suite's speed steady
# when other processes load the machine (idle OpenMP threads spin and steal the cores).
# WARPGRAD_TEST_THREADS=2 runs the suite on two, as a check that no result depends on it.
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path_factory, monkeypatch):
    """Caches never go to the user's home: default cache dir is a temp dir in tests."""
    monkeypatch.setenv("WARPGRAD_CACHE", str(tmp_path_factory.getbasetemp() / "default-cache"))


def coded_dataset(n_classes: int = 12, per_class: int = 6, alphabets: int = 3, size: int = 8):
    """A ClassDataset whose pixels encode (class, instance): pixel [0,0] = class id, [0,1] =
    instance; classes are stored interleaved (not sorted) to exercise the index arithmetic."""
    from warpgrad.data import ClassDataset

    labels = np.tile(np.arange(n_classes), per_class)
    inst = np.repeat(np.arange(per_class), n_classes)
    images = np.zeros((len(labels), 1, size, size), dtype=np.uint8)
    images[:, 0, 0, 0] = labels
    images[:, 0, 0, 1] = inst
    images[:, 0, 2:, 2:] = (labels * 7 + inst * 3)[:, None, None] % 256
    names = [f"c{c:02d}" for c in range(n_classes)]
    alpha = [f"a{c % alphabets}" for c in range(n_classes)]
    return ClassDataset(images, labels, names, alpha, "coded")


@pytest.fixture
def coded():
    return coded_dataset()


def decode_codes(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """(class ids, instance ids) of images made by ``coded_dataset`` (float in [0, 1])."""
    raw = (x[:, 0, 0, :2] * 255).round().long()
    return raw[:, 0].tolist(), raw[:, 1].tolist()


# -- on-disk format writers ------------------------------------------------------------------
def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


OMNI = {
    "images_background": {"Alpha": 3, "Beta": 2},
    "images_evaluation": {"Gamma": 2},
}
OMNI_DRAWINGS = 4


def omniglot_pngs() -> dict[str, bytes]:
    """``{"images_background/Alpha/character01/0101_01.png": png, ...}``: 105x105 1-bit PNGs
    (black strokes on white), each a box whose position encodes its class."""
    from PIL import Image

    files = {}
    k = 0
    for subset, alphabets in OMNI.items():
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                for d in range(1, OMNI_DRAWINGS + 1):
                    a = np.ones((105, 105), dtype=bool)
                    a[10 + 8 * k : 30 + 8 * k, 10 + 2 * d : 40 + 2 * d] = False
                    buf = io.BytesIO()
                    Image.fromarray(a).convert("1").save(buf, format="PNG")
                    name = f"{subset}/{alphabet}/character{c:02d}/{k + 1:04d}_{d:02d}.png"
                    files[name] = buf.getvalue()
                k += 1
    return files


@pytest.fixture
def omniglot_folders(tmp_path) -> Path:
    root = tmp_path / "omniglot"
    for name, data in omniglot_pngs().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def omniglot_zips(tmp_path) -> Path:
    root = tmp_path / "omniglot-zips"
    root.mkdir()
    files = omniglot_pngs()
    for subset in OMNI:
        with zipfile.ZipFile(root / f"{subset}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{subset}/", "")
            for name in sorted(files):
                if name.startswith(subset + "/"):
                    zf.writestr(name, files[name])
    return root


def mini_arrays(n_classes: int = 4, per_class: int = 5, seed: int = 0, size: int = 84):
    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    perm = rng.permutation(n)  # classes interleaved in storage
    wnids = [f"n0{1000000 + 37 * c}" for c in range(n_classes)]
    class_dict = {w: sorted(perm[c * per_class : (c + 1) * per_class].tolist())
                  for c, w in enumerate(wnids)}
    return images, class_dict


@pytest.fixture
def mini_pickle_root(tmp_path) -> Path:
    root = tmp_path / "mini-pkl"
    root.mkdir()
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        images, class_dict = mini_arrays(seed=seed)
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    return root


@pytest.fixture
def mini_csv_root(tmp_path) -> Path:
    """Ravi & Larochelle layout: images/*.jpg (various sizes) and {train,val,test}.csv."""
    from PIL import Image

    root = tmp_path / "mini-csv"
    (root / "images").mkdir(parents=True)
    for s, split in enumerate(("train", "val", "test")):
        lines = ["filename,label"]
        for c in range(3):
            wnid = f"n0{2000000 + 10 * s + c}"
            for i in range(4):
                name = f"{wnid}{i:08d}.jpg"
                colour = (40 * c + 20, 200 - 30 * i, 60 * s + 10)
                Image.new("RGB", (100 + 10 * i, 90), colour).save(root / "images" / name,
                                                                   quality=95)
                lines.append(f"{name},{wnid}")
        lines[1:] = lines[:0:-1]  # reverse order: the loader must not depend on it
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def tiered_arrays(n_classes: int = 3, per_class: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    images = rng.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8)
    specific = rng.permutation(np.repeat(np.arange(n_classes), per_class))
    general_of = np.arange(n_classes) % 2
    labels = {
        "label_specific": specific,
        "label_general": general_of[specific],
        "label_specific_str": [f"n0{3000000 + c}" for c in range(n_classes)],
        "label_general_str": ["animal", "artifact"],
    }
    return images, labels


def write_tiered(root: Path, images: np.ndarray, labels: dict, split: str = "train",
                 as_arrays: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pngs = [png_bytes(im) for im in images]
    items = [np.frombuffer(p, dtype=np.uint8) for p in pngs] if as_arrays else pngs
    with open(root / f"{split}_images_png.pkl", "wb") as f:
        pickle.dump(items, f, protocol=4)
    with open(root / f"{split}_labels.pkl", "wb") as f:
        pickle.dump(labels, f, protocol=4)


@pytest.fixture(scope="session")
def small_recipe():
    from warpgrad.data import GlyphRecipe

    return GlyphRecipe(instances=6, blocks=("Basic Latin", "Greek and Coptic", "Cyrillic",
                                            "Armenian", "Hebrew", "Georgian"))


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("glyph-cache")


@pytest.fixture(scope="session")
def small_glyphs(small_recipe, glyph_cache):
    from warpgrad.data import load_glyphs

    return load_glyphs(small_recipe, cache_dir=glyph_cache)


def write_image_folder(root: Path, groups: int, classes: int, images: int, size: int = 12,
                       grey: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/<class>/<i>.png`` (``groups=0``) or ``root/g<k>/<class>/<i>.png``: each class
    one colour (a grey level when ``grey``) with one inverted row per image, so that every
    image is distinct. Returns each class's colour by class name as the loader names it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {}
    for g in range(max(groups, 1)):
        for c in range(classes):
            name = f"class{g}-{c}"
            folder = root / (f"g{g}" if groups else "") / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = rng.integers(20, 236, 1 if grey else 3).astype(np.uint8)
            colours[f"g{g}/{name}" if groups else name] = colour
            for i in range(images):
                pixels = np.broadcast_to(colour, (size, size, len(colour))).copy()
                pixels[i % size] = 255 - pixels[i % size]
                Image.fromarray(pixels[..., 0] if grey else pixels).save(folder / f"{i}.png")
    return colours
