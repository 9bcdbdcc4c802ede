"""The embedded glyphs dataset: rendering, cache, protocols, contact sheet, sanity accuracy."""

from __future__ import annotations

import dataclasses
import json
import shutil
import unicodedata

import numpy as np
import pytest
import torch

import warpgrad.data._cache as cache_mod
from warpgrad.data import (
    AlphabetTasks,
    DataError,
    FewShotSampler,
    GlyphRecipe,
    contact_sheet,
    load_glyphs,
    nearest_neighbour_accuracy,
    split_by_alphabet,
)
from warpgrad.data.glyphs import find_fonts, glyph_cache_path, matplotlib_font_dir


def test_shapes_and_structure(small_glyphs, small_recipe):
    ds = small_glyphs
    n = ds.num_classes
    assert ds.images.shape == (n * small_recipe.instances, 1, 28, 28)
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert ds.counts.tolist() == [small_recipe.instances] * n
    assert 150 < n < 600
    # letters only, no decomposable variants, no font-duplicates across scripts
    for ch in ds.meta["char"]:
        assert unicodedata.category(ch).startswith("L") and unicodedata.decomposition(ch) == ""
    assert "LATIN CAPITAL LETTER A" in ds.class_names
    assert "GREEK CAPITAL LETTER ALPHA" not in ds.class_names  # looks like Latin A
    assert "CYRILLIC CAPITAL LETTER A" not in ds.class_names
    # alphabets: blocks, large ones cut into chunks of 20..40 letters, small ones dropped
    sizes = {a: len(ds.classes_of(a)) for a in ds.alphabet_names()}
    assert all(10 <= s <= 40 for s in sizes.values()), sizes
    assert any(a.startswith("Cyrillic ") and "/" in a for a in sizes)
    assert all(len(fonts) >= 2 for fonts in ds.meta["fonts"])


def test_images_are_glyphs_not_boxes_or_blanks(small_glyphs):
    x = small_glyphs.images.float() / 255
    ink = x.mean((1, 2, 3))
    assert ink.min() > 0.02 and ink.max() < 0.6  # every image drawn, none a filled blob
    assert (x.amax((1, 2, 3)) > 0.7).all()  # full-contrast strokes
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert border.mean() < 0.05  # glyphs sit inside the box (LastResort draws boxes)
    # instances of a class vary (fonts, strokes, affine), but stay closer than other classes
    a = x[small_glyphs.class_indices(0)].flatten(1)
    assert (a - a[:1]).abs().sum(1)[1:].min() > 0


def test_deterministic_and_seeded(small_recipe, tmp_path):
    tiny = dataclasses.replace(small_recipe, blocks=("Armenian",), instances=3)
    a = load_glyphs(tiny, cache_dir=tmp_path, use_cache=False)
    b = load_glyphs(tiny, cache_dir=tmp_path, use_cache=False)
    c = load_glyphs(dataclasses.replace(tiny, seed=1), cache_dir=tmp_path, use_cache=False)
    assert torch.equal(a.images, b.images) and a.class_names == b.class_names
    assert a.class_names == c.class_names and not torch.equal(a.images, c.images)
    e = load_glyphs(dataclasses.replace(tiny, elastic=1.0), cache_dir=tmp_path, use_cache=False)
    assert not torch.equal(a.images, e.images)
    assert not list(tmp_path.rglob("*.npz"))  # use_cache=False writes nothing


def test_cache_hit_and_key(small_recipe, tmp_path, monkeypatch):
    tiny = dataclasses.replace(small_recipe, blocks=("Hebrew",), instances=2)
    first = load_glyphs(tiny, cache_dir=tmp_path)
    path = glyph_cache_path(tiny, cache_dir=tmp_path)
    assert path.is_file() and first.meta["cache_path"] == str(path)
    assert first.meta["render_seconds"] > 0
    import warpgrad.data.glyphs as glyphs_mod

    monkeypatch.setattr(glyphs_mod, "_render", lambda *a, **k: pytest.fail("re-rendered"))
    again = load_glyphs(tiny, cache_dir=tmp_path)
    assert again.meta["render_seconds"] == 0 and torch.equal(again.images, first.images)
    assert again.alphabets == first.alphabets and again.meta["char"] == first.meta["char"]
    other = dataclasses.replace(tiny, image_size=20)
    assert glyph_cache_path(other, cache_dir=tmp_path) != path


def test_interrupted_cache_write(small_recipe, tmp_path, monkeypatch):
    tiny = dataclasses.replace(small_recipe, blocks=("Hebrew",), instances=2)

    def dies(file, **arrays):
        file.write(b"PK partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(cache_mod.np, "savez_compressed", dies)
    with pytest.raises(RuntimeError):
        load_glyphs(tiny, cache_dir=tmp_path)
    assert not glyph_cache_path(tiny, cache_dir=tmp_path).exists()
    assert list((tmp_path / "glyphs").iterdir()) == []
    monkeypatch.undo()
    assert len(load_glyphs(tiny, cache_dir=tmp_path)) > 0


def test_extra_font_dirs(tmp_path):
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf"):
        shutil.copy(matplotlib_font_dir() / name, fonts / f"My{name}")
    recipe = GlyphRecipe(instances=2, matplotlib_fonts=False, font_dirs=(str(fonts),),
                         blocks=("Armenian",))
    assert [f.name for f in find_fonts(recipe)] == ["MyDejaVuSans.ttf", "MyDejaVuSerif.ttf"]
    ds = load_glyphs(recipe, cache_dir=tmp_path)
    assert ds.num_classes > 20
    assert all(set(f) == {"MyDejaVuSans.ttf", "MyDejaVuSerif.ttf"} for f in ds.meta["fonts"])
    with pytest.raises(DataError, match="does not exist"):
        find_fonts(GlyphRecipe(font_dirs=(str(tmp_path / "nope"),)))
    (fonts / "Broken.ttf").write_bytes(b"not a font")
    with pytest.raises(DataError, match=r"Broken\.ttf"):
        find_fonts(recipe)


def test_few_shot_and_alphabet_protocols(small_glyphs):
    splits = split_by_alphabet(small_glyphs, seed=0)
    json.dumps(splits.record)
    assert not set(splits.train.alphabets) & set(splits.test.alphabets)
    sampler = FewShotSampler(splits.train, n_way=5, k_shot=1, k_query=5)
    t1 = sampler.sample(torch.Generator().manual_seed(0))
    t2 = sampler.sample(torch.Generator().manual_seed(0))
    assert t1.x_train.shape == (5, 1, 28, 28) and torch.equal(t1.x_test, t2.x_test)
    tasks = AlphabetTasks(small_glyphs, train_shots=4, test_shots=2, seed=0)
    task = tasks.train[0]
    assert task.x_train.shape == (80, 1, 28, 28) and task.x_test.shape == (40, 1, 28, 28)
    assert int(task.y_train.max()) == 19 and task.meta_split == "train"
    xb, yb = task.train_batch(torch.Generator().manual_seed(0))
    assert xb.shape == (128, 1, 28, 28) and yb.shape == (128,)


def test_pixel_nearest_neighbour_beats_chance(small_glyphs):
    splits = split_by_alphabet(small_glyphs, seed=0)
    sampler = FewShotSampler(splits.test, n_way=5, k_shot=1, k_query=5)
    acc, ci = nearest_neighbour_accuracy(sampler, n_tasks=200, seed=0)
    assert acc - ci > 0.35, (acc, ci)  # chance is 0.20
    # and it is not trivially easy either: the instances really vary
    assert acc < 0.9


def test_contact_sheet(small_glyphs, tmp_path):
    from PIL import Image

    path = contact_sheet(small_glyphs, tmp_path / "sheet.png", n_alphabets=4,
                         classes_per_alphabet=2, instances=5, zoom=1)
    img = np.asarray(Image.open(path))
    assert img.ndim == 2 and img.shape[0] >= 8 * 28 and img.shape[1] >= 5 * 28
    assert img.std() > 20
    assert not list(tmp_path.glob(".*.tmp"))
