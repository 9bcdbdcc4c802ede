"""Omniglot loader: folders and zips as distributed, caching, and every bad-input case."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

import warpgrad.data._cache as cache_mod
from tests.conftest import OMNI, OMNI_DRAWINGS
from warpgrad.data import AlphabetTasks, DataError, load_omniglot, omniglot_standard_split

N_CLASSES = sum(n for alphabets in OMNI.values() for n in alphabets.values())


def check_fixture(ds):
    assert ds.name == "omniglot"
    assert ds.images.shape == (N_CLASSES * OMNI_DRAWINGS, 1, 28, 28)
    assert ds.images.dtype == torch.uint8
    assert ds.class_names[:3] == ["Alpha/character01", "Alpha/character02", "Alpha/character03"]
    assert ds.alphabet_names() == ["Alpha", "Beta", "Gamma"]
    assert ds.meta["subset"] == ["images_background"] * 5 + ["images_evaluation"] * 2
    assert ds.counts.tolist() == [OMNI_DRAWINGS] * N_CLASSES
    # inverted: strokes (the black box in the PNG) are bright, the background dark
    img = ds.images[0, 0].float()
    assert img[0, 0] == 0 and img.max() > 200
    # the box position encodes the class: classes differ, drawings of a class are similar
    means = torch.stack([ds.images[ds.class_indices(c)].float().mean(0) for c in range(7)])
    assert (means[0] - means[1]).abs().max() > 100


def test_folders(omniglot_folders, tmp_path):
    ds = load_omniglot(omniglot_folders, cache_dir=tmp_path / "cache")
    check_fixture(ds)
    assert len(list((tmp_path / "cache" / "omniglot").glob("*.npz"))) == 1


def test_zips_match_folders(omniglot_folders, omniglot_zips, tmp_path):
    a = load_omniglot(omniglot_folders, cache_dir=tmp_path / "c1")
    b = load_omniglot(omniglot_zips, cache_dir=tmp_path / "c2")
    check_fixture(b)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.class_names == b.class_names


def test_cache_is_used_and_image_size(omniglot_folders, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_omniglot(omniglot_folders, cache_dir=cache)
    import warpgrad.data.omniglot as om

    def boom(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(om, "_decode_all", boom)
    again = load_omniglot(omniglot_folders, cache_dir=cache)
    assert torch.equal(first.images, again.images)
    monkeypatch.undo()
    big = load_omniglot(omniglot_folders, cache_dir=cache, image_size=32, invert=False)
    assert big.images.shape[-2:] == (32, 32) and big.images[0, 0, 0, 0] == 255
    assert len(list((cache / "omniglot").glob("*.npz"))) == 2


def test_standard_split_and_alphabet_tasks(omniglot_folders, tmp_path):
    ds = load_omniglot(omniglot_folders, cache_dir=tmp_path)
    splits = omniglot_standard_split(ds, n_val=1, seed=0)
    assert splits.record["test"] == ["Gamma"]
    assert sorted(splits.record["train"] + splits.record["val"]) == ["Alpha", "Beta"]
    tasks = AlphabetTasks(ds, n_way=2, train_shots=3, test_shots=1, n_train_tasks=2,
                          n_test_tasks=1, seed=0)
    assert len(tasks) == 3 and tasks.train[0].x_train.shape == (6, 1, 28, 28)


# -- bad input ------------------------------------------------------------------------------------
def test_missing_root_lists_expected_layout(tmp_path):
    with pytest.raises(DataError) as err:
        load_omniglot(tmp_path / "nowhere", cache_dir=tmp_path)
    msg = str(err.value)
    assert "nowhere" in msg and "images_background" in msg and "images_evaluation" in msg
    assert ".zip" in msg and "<Alphabet>/<characterNN>/<id>.png" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing images_background, images_evaluation"):
        load_omniglot(tmp_path / "empty", cache_dir=tmp_path)


def test_one_subset_missing_is_named(omniglot_folders, tmp_path):
    import shutil

    shutil.rmtree(omniglot_folders / "images_evaluation")
    with pytest.raises(DataError, match="missing images_evaluation"):
        load_omniglot(omniglot_folders, cache_dir=tmp_path)
    ds = load_omniglot(omniglot_folders, subsets=["images_background"], cache_dir=tmp_path)
    assert ds.alphabet_names() == ["Alpha", "Beta"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_png_is_named(omniglot_folders, tmp_path, damage):
    bad = omniglot_folders / "images_background" / "Beta" / "character02" / "0005_03.png"
    data = bad.read_bytes()
    bad.write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match=r"0005_03\.png"):
        load_omniglot(omniglot_folders, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing half-written


def test_truncated_zip_is_named(omniglot_zips, tmp_path):
    z = omniglot_zips / "images_evaluation.zip"
    z.write_bytes(z.read_bytes()[:300])
    with pytest.raises(DataError, match=r"images_evaluation\.zip"):
        load_omniglot(omniglot_zips, cache_dir=tmp_path)


def test_corrupt_member_in_zip_is_named(tmp_path):
    from tests.conftest import omniglot_pngs

    root = tmp_path / "z"
    root.mkdir()
    files = omniglot_pngs()
    for subset in OMNI:
        with zipfile.ZipFile(root / f"{subset}.zip", "w", zipfile.ZIP_STORED) as zf:
            for name in sorted(files):
                if name.startswith(subset):
                    zf.writestr(name, files[name])
    # flip bytes inside a stored member: the CRC check must catch it
    raw = bytearray((root / "images_evaluation.zip").read_bytes())
    raw[200:260] = bytes(60)
    (root / "images_evaluation.zip").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="images_evaluation"):
        load_omniglot(root, cache_dir=tmp_path / "cache")


def test_interrupted_cache_write_leaves_no_cache(omniglot_folders, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = np.savez_compressed

    def dies_midway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(cache_mod.np, "savez_compressed", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load_omniglot(omniglot_folders, cache_dir=cache)
    assert list((cache / "omniglot").iterdir()) == []  # no cache, no temp file
    monkeypatch.setattr(cache_mod.np, "savez_compressed", real)
    ds = load_omniglot(omniglot_folders, cache_dir=cache)  # the retry works
    check_fixture(ds)
    assert len(list((cache / "omniglot").glob("omniglot-*.npz"))) == 1


def test_broken_cache_is_rebuilt(omniglot_folders, tmp_path):
    cache = tmp_path / "cache"
    load_omniglot(omniglot_folders, cache_dir=cache)
    (path,) = (cache / "omniglot").glob("*.npz")
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        ds = load_omniglot(omniglot_folders, cache_dir=cache)
    check_fixture(ds)
