"""Few-shot episodes, alphabet tasks, augmentation, splits and class rotation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import coded_dataset, decode_codes
from warpgrad.data import (
    AlphabetTasks,
    DataError,
    FewShotSampler,
    RandomAffine,
    rotate_classes,
    split_by_alphabet,
    split_by_class,
    split_from_record,
)
from warpgrad.data.augment import affine_theta, warp_affine
from warpgrad.tasks.base import Task


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- FewShotSampler -------------------------------------------------------------------------------
def test_episode_shapes_labels_and_content(coded):
    sampler = FewShotSampler(coded, n_way=5, k_shot=2, k_query=3)
    task = sampler.sample(gen(0))
    assert isinstance(task, Task)
    assert task.x_train.shape == (10, 1, 8, 8) and task.x_test.shape == (15, 1, 8, 8)
    assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
    assert task.x_train.min() >= 0 and task.x_train.max() <= 1
    assert task.y_train.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert task.y_test.tolist() == [i for i in range(5) for _ in range(3)]
    assert task.batch_size is None and task.meta_split == "test"
    cls_tr, inst_tr = decode_codes(task.x_train)
    cls_te, inst_te = decode_codes(task.x_test)
    # every remapped label is one original class, distinct across labels
    mapping = {}
    for y, c in zip(task.y_train.tolist() + task.y_test.tolist(), cls_tr + cls_te, strict=True):
        assert mapping.setdefault(y, c) == c
    assert len(set(mapping.values())) == 5
    # support and query images of a class are distinct drawings
    for y in range(5):
        tr = {i for i, lab in zip(inst_tr, task.y_train.tolist(), strict=True) if lab == y}
        te = {i for i, lab in zip(inst_te, task.y_test.tolist(), strict=True) if lab == y}
        assert len(tr) == 2 and len(te) == 3 and not tr & te


def test_episodes_deterministic_under_seed(coded):
    sampler = FewShotSampler(coded, n_way=5, k_shot=1, k_query=2)
    a, b, c = sampler.sample(gen(3)), sampler.sample(gen(3)), sampler.sample(gen(4))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    e1 = [t.x_test for t in sampler.episodes(4, seed=9)]
    e2 = [t.x_test for t in FewShotSampler(coded, 5, 1, 2, seed=123).episodes(4, seed=9)]
    assert all(torch.equal(x, y) for x, y in zip(e1, e2, strict=True))
    # the sampler's own generator is seeded too
    s1, s2 = FewShotSampler(coded, 5, 1, 2, seed=7), FewShotSampler(coded, 5, 1, 2, seed=7)
    assert torch.equal(s1.sample().x_train, s2.sample().x_train)


def test_sampling_covers_classes_and_skips_small_ones():
    ds = coded_dataset(n_classes=8, per_class=4)
    # drop class 0 to 2 images: it must never be drawn for 1 + 2 images per class
    keep = ~((ds.labels == 0) & (torch.arange(len(ds)) >= 16))
    from warpgrad.data import ClassDataset

    small = ClassDataset(ds.images[keep], ds.labels[keep], ds.class_names, ds.alphabets)
    sampler = FewShotSampler(small, n_way=3, k_shot=1, k_query=2)
    seen = set()
    g = gen(0)
    for _ in range(60):
        classes, index = sampler.sample_indices(g)
        seen.update(classes.tolist())
        assert (small.labels[index] == classes[:, None]).all()
    assert seen == set(range(1, 8))
    with pytest.raises(DataError, match="classes with at least"):
        FewShotSampler(small, n_way=8, k_shot=1, k_query=2)


def test_episode_on_device(coded):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    task = FewShotSampler(coded, 5, 1, 1, device="cuda").sample(gen(0))
    assert task.x_train.is_cuda and task.y_test.is_cuda


# -- AlphabetTasks ------------------------------------------------------------------------------
def test_alphabet_tasks_protocol():
    ds = coded_dataset(n_classes=60, per_class=7, alphabets=5)  # 5 alphabets of 12 chars
    tasks = AlphabetTasks(ds, n_way=10, train_shots=4, test_shots=3, batch_size=16,
                          n_train_tasks=3, n_test_tasks=1, seed=0)
    assert [len(tasks.train), len(tasks.val), len(tasks.test)] == [3, 1, 1]
    all_alpha = tasks.alphabets["train"] + tasks.alphabets["val"] + tasks.alphabets["test"]
    assert sorted(all_alpha) == ds.alphabet_names()
    for alphabet in all_alpha:
        task = tasks.task(alphabet)
        assert task.x_train.shape == (40, 1, 8, 8) and task.x_test.shape == (30, 1, 8, 8)
        assert task.y_train.tolist() == [i for i in range(10) for _ in range(4)]
        assert task.batch_size == 16 and task.meta_split == "train"
        assert isinstance(task.transform, RandomAffine)
        cls_tr, inst_tr = decode_codes(task.x_train)
        cls_te, inst_te = decode_codes(task.x_test)
        names = [ds.class_names[c] for c in cls_tr[::4]]
        assert names == tasks.classes[alphabet]
        assert {ds.alphabets[c] for c in cls_tr + cls_te} == {alphabet}
        train_pairs = set(zip(cls_tr, inst_tr, strict=True))
        test_pairs = set(zip(cls_te, inst_te, strict=True))
        assert len(train_pairs) == 40 and len(test_pairs) == 30 and not train_pairs & test_pairs
        xb, yb = task.train_batch(gen(0))
        assert xb.shape == (16, 1, 8, 8) and yb.shape == (16,)
    json.dumps(tasks.record())


def test_alphabet_tasks_deterministic():
    ds = coded_dataset(n_classes=60, per_class=7, alphabets=5)
    kw = dict(n_way=10, train_shots=4, test_shots=3, n_train_tasks=3, n_test_tasks=1)
    a, b = AlphabetTasks(ds, seed=1, **kw), AlphabetTasks(ds, seed=1, **kw)
    c = AlphabetTasks(ds, seed=2, **kw)
    assert a.record() == b.record() and a.record() != c.record()
    for ta, tb in zip(a.train, b.train, strict=True):
        assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.x_test, tb.x_test)
    assert torch.equal(a.train[0].train_batch(gen(5))[0], b.train[0].train_batch(gen(5))[0])
    # alphabets too small for the task are skipped
    with pytest.raises(DataError, match="no alphabet"):
        AlphabetTasks(ds, n_way=13, train_shots=4, test_shots=3)


# -- augmentation ---------------------------------------------------------------------------------
def test_random_affine_identity_and_rotation():
    x = torch.rand(6, 1, 9, 9)
    ident = RandomAffine(degrees=(0, 0), translate=0.0, scale=(1, 1))
    assert torch.allclose(ident(x, gen(0)), x, atol=1e-5)
    quarter = RandomAffine(degrees=(90, 90), translate=0.0, scale=(1, 1))
    assert torch.allclose(quarter(x, gen(0)), torch.rot90(x, 1, (-2, -1)), atol=1e-5)
    # a pure shift by 1/9 of the width moves every pixel by exactly one column
    one = torch.ones(6, dtype=torch.float64)
    theta = affine_theta(0 * one, one, one / 9, 0 * one, size=(9, 9)).float()
    shifted = warp_affine(x, theta)
    assert torch.allclose(shifted[..., 1:], x[..., :-1], atol=1e-5)
    assert torch.allclose(shifted[..., 0], torch.zeros(()))


def test_random_affine_seeded_and_shape_preserving():
    x = torch.rand(16, 3, 12, 12)
    aug = RandomAffine()
    a, b, c = aug(x, gen(1)), aug(x, gen(1)), aug(x, gen(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    # mass is roughly kept at scale ~1 for a centred blob (class-preserving, not destructive)
    blob = torch.zeros(8, 1, 28, 28)
    blob[..., 11:17, 11:17] = 1
    out = RandomAffine(translate=0.1, scale=(1, 1))(blob, gen(0))
    assert torch.allclose(out.sum((1, 2, 3)), blob.sum((1, 2, 3)), rtol=0.15)
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), gen(0))


# -- splits and rotations -----------------------------------------------------------------------
def test_split_by_alphabet_disjoint_and_recorded():
    ds = coded_dataset(n_classes=40, per_class=2, alphabets=10)
    splits = split_by_alphabet(ds, (0.6, 0.2, 0.2), seed=0)
    alpha = {s: set(splits[s].alphabets) for s in ("train", "val", "test")}
    assert [len(alpha[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert not alpha["train"] & alpha["val"] and not alpha["train"] & alpha["test"]
    assert not alpha["val"] & alpha["test"]
    classes = [set(splits[s].class_names) for s in ("train", "val", "test")]
    assert sum(map(len, classes)) == 40 and len(set().union(*classes)) == 40
    # labels of each split are remapped to 0..k-1
    for s in ("train", "val", "test"):
        assert splits[s].labels.max() == splits[s].num_classes - 1
    record = json.loads(splits.to_json())
    again = split_from_record(ds, record)
    assert again.test.class_names == splits.test.class_names
    assert torch.equal(again.test.images, splits.test.images)
    assert split_by_alphabet(ds, seed=0).record == splits.record
    assert split_by_alphabet(ds, seed=1).record != splits.record
    counts = split_by_alphabet(ds, (-1, 1, 3), seed=0)
    assert [len(counts.record[s]) for s in ("train", "val", "test")] == [6, 1, 3]


def test_split_by_class_disjoint():
    ds = coded_dataset(n_classes=20, per_class=2)
    splits = split_by_class(ds, (0.5, 0.25, 0.25), seed=3)
    names = [set(splits[s].class_names) for s in ("train", "val", "test")]
    assert [len(n) for n in names] == [10, 5, 5]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    with pytest.raises(DataError):
        split_from_record(ds, {"by": "class", "train": ["nope"]})


def test_rotate_classes_makes_four_times_the_classes(coded):
    rot = rotate_classes(coded)
    assert rot.num_classes == 4 * coded.num_classes and len(rot) == 4 * len(coded)
    assert rot.class_names[:4] == ["c00", "c00@90", "c00@180", "c00@270"]
    assert rot.alphabets[:4] == [coded.alphabets[0]] * 4
    for j, k in enumerate((0, 1, 2, 3)):
        orig = coded.images[coded.class_indices(0)]
        new = rot.images[rot.class_indices(j)]
        assert torch.equal(new, torch.rot90(orig, k, (-2, -1)))
    # rotated copies are distinct images, so rotation really makes new classes
    assert not torch.equal(rot.images[rot.class_indices(0)], rot.images[rot.class_indices(1)])
    assert math.isclose(rot.counts.float().mean().item(), coded.counts.float().mean().item())
