"""miniImageNet (pickle and csv layouts) and tieredImageNet loaders, bad input, and memory."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import torch

import warpgrad.data.imagenet as imagenet_mod
from tests.conftest import mini_arrays, tiered_arrays, write_tiered
from warpgrad.data import (
    DataError,
    FewShotSampler,
    load_mini_imagenet,
    load_tiered_imagenet,
    split_by_alphabet,
)


# -- miniImageNet pickle --------------------------------------------------------------------------
def test_mini_pickle_round_trip(mini_pickle_root, tmp_path):
    images, class_dict = mini_arrays(seed=0)
    ds = load_mini_imagenet(mini_pickle_root, "train", cache_dir=tmp_path)
    assert ds.images.shape == (20, 3, 84, 84) and ds.images.dtype == torch.uint8
    assert ds.class_names == sorted(class_dict)
    for c, wnid in enumerate(ds.class_names):
        idx = class_dict[wnid]
        assert (ds.labels[idx] == c).all()
        assert torch.equal(ds.images[idx], torch.from_numpy(images[idx]).permute(0, 3, 1, 2))
    # "val" finds the "validation" file; each split is its own file
    val = load_mini_imagenet(mini_pickle_root, "val", cache_dir=tmp_path)
    assert not torch.equal(val.images, ds.images)
    task = FewShotSampler(ds, n_way=3, k_shot=1, k_query=2).sample(torch.Generator())
    assert task.x_train.shape == (3, 3, 84, 84) and task.x_train.dtype == torch.float32
    small = load_mini_imagenet(mini_pickle_root, "test", image_size=32, cache_dir=tmp_path)
    assert small.images.shape == (20, 3, 32, 32)


def test_mini_pickle_is_not_copied(tmp_path):
    """Peak traced memory of loading stays below 1.5x the decoded images."""
    images, class_dict = mini_arrays(n_classes=10, per_class=120, seed=3)  # 25 MB
    (tmp_path / "m").mkdir()
    with open(tmp_path / "m" / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
    nbytes = images.nbytes
    del images
    tracemalloc.start()
    try:
        ds = load_mini_imagenet(tmp_path / "m", "train", cache_dir=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ds) == 1200
    assert peak < 1.5 * nbytes, f"peak {peak / nbytes:.2f}x the decoded size"


def test_mini_csv_layout(mini_csv_root, tmp_path):
    cache = tmp_path / "cache"
    ds = load_mini_imagenet(mini_csv_root, "val", cache_dir=cache)
    assert ds.images.shape == (12, 3, 84, 84)
    assert ds.class_names == ["n02000010", "n02000011", "n02000012"]
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # solid-colour JPEGs come back (nearly) with their colour
    for c in range(3):
        for i in range(4):
            pixel = ds.images[4 * c + i, :, 40, 40].int()
            expected = torch.tensor([40 * c + 20, 200 - 30 * i, 60 + 10])
            assert (pixel - expected).abs().max() <= 3
    assert len(list((cache / "mini-imagenet").glob("*.npy"))) == 1
    again = load_mini_imagenet(mini_csv_root, "val", cache_dir=cache)
    assert torch.equal(again.images, ds.images)


def test_mini_missing_lists_expected_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_mini_imagenet(tmp_path, "train", cache_dir=tmp_path)
    msg = str(err.value)
    assert "mini-imagenet-cache-train.pkl" in msg and "train.csv" in msg and "images/" in msg
    assert "image_data" in msg and "class_dict" in msg


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_mini_corrupt_pickle_is_named(mini_pickle_root, tmp_path, damage):
    path = mini_pickle_root / "mini-imagenet-cache-test.pkl"
    data = path.read_bytes()
    path.write_bytes(b"\x80\x04garbage..." if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(DataError, match=r"mini-imagenet-cache-test\.pkl"):
        load_mini_imagenet(mini_pickle_root, "test", cache_dir=tmp_path)


def test_mini_wrong_structure_and_unsafe_pickles(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    with open(root / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"images": np.zeros(3)}, f)
    with pytest.raises(DataError, match="image_data"):
        load_mini_imagenet(root, "train", cache_dir=tmp_path)
    with open(root / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": __import__("os").getcwd}, f)  # refers to a function
    with pytest.raises(DataError, match="refusing"):
        load_mini_imagenet(root, "train", cache_dir=tmp_path)


def test_mini_csv_missing_image_and_corrupt_jpeg(mini_csv_root, tmp_path):
    files = sorted((mini_csv_root / "images").glob("n0200000*.jpg"))
    good = files[1].read_bytes()
    files[1].write_bytes(good[:100])
    with pytest.raises(DataError, match=files[1].name):
        load_mini_imagenet(mini_csv_root, "train", cache_dir=tmp_path)
    files[1].write_bytes(good)
    files[2].unlink()
    with pytest.raises(DataError, match=files[2].name):
        load_mini_imagenet(mini_csv_root, "train", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.npy"))


# -- tieredImageNet -------------------------------------------------------------------------------
@pytest.mark.parametrize("as_arrays", [False, True])
def test_tiered_round_trip(tmp_path, as_arrays):
    images, labels = tiered_arrays()
    write_tiered(tmp_path / "t", images, labels, "train", as_arrays=as_arrays)
    ds = load_tiered_imagenet(tmp_path / "t", "train", cache_dir=tmp_path / "cache")
    assert ds.images.shape == (12, 3, 84, 84)
    assert torch.equal(ds.images, torch.from_numpy(images).permute(0, 3, 1, 2))  # lossless
    assert ds.labels.tolist() == labels["label_specific"].tolist()
    assert ds.class_names == labels["label_specific_str"]
    assert ds.alphabets == ["animal", "artifact", "animal"]
    splits = split_by_alphabet(ds, (1, 0, 1), seed=0)
    assert splits.train.num_classes + splits.test.num_classes == 3
    # second load: memory-mapped cache, same data
    again = load_tiered_imagenet(tmp_path / "t", "train", cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, ds.images)
    assert len(list((tmp_path / "cache" / "tiered-imagenet").glob("*.npy"))) == 1


def test_tiered_streaming_memory(tmp_path):
    """Decoding a PNG pickle never holds the whole PNG list: peak < 1.5x decoded size.

    The pickle appends items in batches of 1,000, so the list must span many batches (small
    images keep the test fast); at most one batch of PNGs is alive at a time.
    """
    rng = np.random.default_rng(0)
    n = 8000
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)  # incompressible PNGs
    labels = {"label_specific": np.arange(n) % 4, "label_general": np.zeros(n, int),
              "label_specific_str": list("abcd"), "label_general_str": ["g"]}
    write_tiered(tmp_path / "t", images, labels, "test")
    png_size = (tmp_path / "t" / "test_images_png.pkl").stat().st_size
    assert png_size > 0.9 * images.nbytes  # so a non-streaming load would need ~2x
    del images
    tracemalloc.start()
    try:
        ds = load_tiered_imagenet(tmp_path / "t", "test", image_size=16, use_cache=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    decoded = ds.images.numel()
    assert peak < 1.5 * decoded, f"peak {peak / decoded:.2f}x the decoded size"


def test_tiered_missing_files_listed(tmp_path):
    with pytest.raises(DataError) as err:
        load_tiered_imagenet(tmp_path, "val", cache_dir=tmp_path)
    msg = str(err.value)
    assert "val_images_png.pkl" in msg and "val_labels.pkl" in msg and "label_specific" in msg


def test_tiered_truncated_and_corrupt(tmp_path):
    images, labels = tiered_arrays()
    root = tmp_path / "t"
    write_tiered(root, images, labels, "train")
    pkl = root / "train_images_png.pkl"
    data = pkl.read_bytes()
    pkl.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train_images_png"):
        load_tiered_imagenet(root, "train", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.npy"))
    # a corrupt PNG inside the list is named by file and index
    from tests.conftest import png_bytes

    pngs = [png_bytes(im) for im in images]
    pngs[5] = pngs[5][:40]
    with open(pkl, "wb") as f:
        pickle.dump(pngs, f, protocol=4)
    with pytest.raises(DataError, match=r"train_images_png\.pkl\[5\]"):
        load_tiered_imagenet(root, "train", cache_dir=tmp_path / "cache")
    # label and image counts must agree
    with open(pkl, "wb") as f:
        pickle.dump([png_bytes(im) for im in images[:7]], f, protocol=4)
    with pytest.raises(DataError, match="holds 7 images"):
        load_tiered_imagenet(root, "train", cache_dir=tmp_path / "cache")
    (root / "train_labels.pkl").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"train_labels\.pkl"):
        load_tiered_imagenet(root, "train", cache_dir=tmp_path / "cache")


def test_tiered_interrupted_cache_write(tmp_path, monkeypatch):
    images, labels = tiered_arrays()
    write_tiered(tmp_path / "t", images, labels, "train")
    cache = tmp_path / "cache"

    def dies(file, array, allow_pickle=False):
        file.write(b"\x93NUMPY partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(imagenet_mod.np, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        load_tiered_imagenet(tmp_path / "t", "train", cache_dir=cache)
    assert list((cache / "tiered-imagenet").iterdir()) == []
    monkeypatch.undo()
    ds = load_tiered_imagenet(tmp_path / "t", "train", cache_dir=cache)
    assert torch.equal(ds.images, torch.from_numpy(images).permute(0, 3, 1, 2))
