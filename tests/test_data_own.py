"""Your own data: class folders (with and without groups), tensors of any shape and dtype, a
``torch.utils.data.Dataset``, memory-mapped features."""

import numpy as np
import pytest
import torch

from tests.conftest import write_image_folder
from warpgrad.data import ClassDataset, DataError, FewShotSampler, load_folder, split_by_class


def test_folder_without_groups_keeps_its_colours_and_caches(tmp_path):
    colours = write_image_folder(tmp_path / "pets", groups=0, classes=3, images=4, size=8)
    cache = tmp_path / "cache"
    ds = load_folder(tmp_path / "pets", image_size=8, cache_dir=cache)
    assert ds.images.shape == (12, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.class_names == ["class0-0", "class0-1", "class0-2"] and ds.alphabets is None
    for c, name in enumerate(ds.class_names):
        first = ds.images[ds.class_indices(c)[0]]
        # not inverted: the untouched rows hold the class's colour
        assert first[:, 1:, :].permute(1, 2, 0).reshape(-1, 3).tolist()[0] == \
            colours[name].tolist()
    assert len(list((cache / "folder").glob("*.npz"))) == 1
    again = load_folder(tmp_path / "pets", image_size=8, cache_dir=cache)
    assert torch.equal(again.images, ds.images) and again.meta["cache_path"] == \
        ds.meta["cache_path"]


def test_folder_with_groups_names_classes_by_group_and_grey_stays_one_channel(tmp_path):
    colours = write_image_folder(tmp_path / "scripts", groups=2, classes=2, images=3,
                                 grey=True)
    ds = load_folder(tmp_path / "scripts", image_size=6, cache_dir=tmp_path / "cache")
    assert ds.images.shape == (12, 1, 6, 6)
    assert ds.class_names == sorted(colours) and ds.alphabets == ["g0", "g0", "g1", "g1"]
    assert ds.alphabet_names() == ["g0", "g1"]


def test_folder_errors_name_the_file_or_the_layout(tmp_path):
    write_image_folder(tmp_path / "data", groups=0, classes=2, images=2)
    (tmp_path / "data" / "class0-1" / "notes.txt").write_text("ignored")
    (tmp_path / "data" / "class0-1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png"):
        load_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="does not exist; expected <root>/<class>/<image>"):
        load_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_folder(tmp_path / "empty")


def test_from_tensors_float_vectors_with_string_labels_and_groups():
    x = torch.arange(40 * 3, dtype=torch.float64).reshape(40, 3) / 7.0
    y = [f"animal-{i % 4}" for i in range(40)]
    ds = ClassDataset.from_tensors(x, y, groups={f"animal-{k}": f"kind{k // 2}"
                                                 for k in range(4)})
    assert ds.feature_shape == (3,) and not ds.is_images
    assert ds.class_names == ["animal-0", "animal-1", "animal-2", "animal-3"]
    assert ds.alphabets == ["kind0", "kind0", "kind1", "kind1"]
    assert ds.counts.tolist() == [10, 10, 10, 10]
    task = FewShotSampler(ds, n_way=2, k_shot=3, k_query=2, seed=0).sample()
    assert task.x_train.shape == (6, 3) and task.x_train.dtype == torch.float32
    # float features are not scaled: every row is one of the source rows, as it was
    source = {tuple(r) for r in x.float().tolist()}
    assert all(tuple(r) in source for r in task.x_train.tolist())
    with pytest.raises(ValueError, match="groups has no entry"):
        ClassDataset.from_tensors(x, y, groups={"animal-0": "a"})
    with pytest.raises(ValueError, match="40 rows but y has 39"):
        ClassDataset.from_tensors(x, y[:-1])


class _Signals(torch.utils.data.Dataset):
    """1-D signals ``[2, 5]`` whose values encode their index; label = index % 3."""

    def __init__(self, n: int = 30, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.reads = n, fail_at, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i >= self.n:
            raise IndexError(i)
        if i == self.fail_at:
            raise RuntimeError("source broke")
        self.reads += 1
        return torch.full((2, 5), float(i)), torch.tensor(i % 3)


def test_from_dataset_in_memory_and_memory_mapped_give_the_same_data(tmp_path):
    in_memory = ClassDataset.from_dataset(_Signals(), name="signals")
    path = tmp_path / "features.npy"
    mapped = ClassDataset.from_dataset(_Signals(), memmap=path)
    assert in_memory.feature_shape == mapped.feature_shape == (2, 5)
    assert in_memory.class_names == ["0", "1", "2"]
    assert torch.equal(in_memory.images, mapped.images)
    assert torch.equal(in_memory.labels, mapped.labels)
    on_disk = np.load(path, mmap_mode="r")
    assert on_disk.shape == (30, 2, 5) and on_disk[7, 1, 3] == 7.0
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]
    splits = split_by_class(mapped, (1, 1, 1))
    assert sorted(splits.train.class_names + splits.val.class_names +
                  splits.test.class_names) == ["0", "1", "2"]
    with pytest.raises(DataError, match="holds 30 examples, the dataset 12"):
        ClassDataset.from_dataset(_Signals(12), memmap=path)


def test_from_dataset_interrupted_leaves_no_memory_map_behind(tmp_path):
    with pytest.raises(RuntimeError, match="source broke"):
        ClassDataset.from_dataset(_Signals(fail_at=20), memmap=tmp_path / "f.npy")
    assert list(tmp_path.iterdir()) == []


def test_class_dataset_rejects_integer_features_and_names_the_shape():
    with pytest.raises(ValueError, match="uint8 \\[N, C, H, W\\] or floating-point"):
        ClassDataset(torch.zeros(4, 3, dtype=torch.int32), torch.zeros(4), ["a"])
    vectors = ClassDataset(torch.zeros(4, 3), torch.zeros(4), ["a"])
    with pytest.raises(DataError, match="features of shape \\(3,\\), not images"):
        vectors.image_shape  # noqa: B018
