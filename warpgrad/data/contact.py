"""Contact sheets: a PNG grid of samples, so a person can look at the data."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ._cache import atomic_write
from .dataset import ClassDataset

__all__ = ["contact_sheet"]


def _short(name: str, limit: int = 34) -> str:
    if len(name) <= limit:
        return name
    tail = name.rpartition(" ")[2]
    tail = tail if "/" in tail else ""
    return name[: limit - len(tail) - 2].rstrip() + "… " + tail


def _pick_rows(dataset: ClassDataset, n_alphabets: int, classes_per_alphabet: int,
               seed: int) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed)
    if dataset.alphabets is None:
        n = min(dataset.num_classes, n_alphabets * classes_per_alphabet)
        return [("", sorted(rng.choice(dataset.num_classes, n, replace=False).tolist()))]
    # alphabets in the dataset's own class order, evenly spread over the whole dataset
    order = list(dict.fromkeys(dataset.alphabets))
    take = np.unique(np.linspace(0, len(order) - 1, min(n_alphabets, len(order))).round())
    rows = []
    for i in take.astype(int):
        classes = dataset.classes_of(order[i])
        k = min(classes_per_alphabet, len(classes))
        rows.append((order[i], sorted(rng.choice(classes, k, replace=False).tolist())))
    return rows


def contact_sheet(
    dataset: ClassDataset,
    path: str | os.PathLike[str],
    *,
    n_alphabets: int = 12,
    classes_per_alphabet: int = 3,
    instances: int = 12,
    zoom: int = 2,
    seed: int = 0,
    labels: bool = True,
) -> Path:
    """Write a PNG grid of ``dataset``'s images to ``path`` and return the path.

    Rows are classes (``classes_per_alphabet`` from each of ``n_alphabets`` alphabets spread
    over the dataset, chosen by ``seed``; random classes if there are no alphabets), columns
    are the first ``instances`` images of each class, each image enlarged ``zoom`` times.
    With ``labels`` the alphabet name is written left of its first row.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows = _pick_rows(dataset, n_alphabets, classes_per_alphabet, seed)
    c, h, w = dataset.image_shape
    th, tw, gap = h * zoom, w * zoom, max(1, zoom)
    margin = 0
    font = None
    if labels and dataset.alphabets is not None:
        from .glyphs import matplotlib_font_dir

        font = ImageFont.truetype(str(matplotlib_font_dir() / "DejaVuSans.ttf"), 11)
        margin = 8 + max(int(font.getlength(_short(a))) for a, _ in rows)
    n_rows = sum(len(cl) for _, cl in rows)
    group_gap = 3 * gap
    height = n_rows * (th + gap) + len(rows) * group_gap + gap
    width = margin + instances * (tw + gap) + gap
    mode = "L" if c == 1 else "RGB"
    sheet = Image.new(mode, (width, height), 96 if c == 1 else (96, 96, 96))
    draw = ImageDraw.Draw(sheet)
    y = gap
    for alphabet, classes in rows:
        y += group_gap // 2
        if font is not None:
            draw.text((4, y), _short(alphabet), fill=255 if c == 1 else (255, 255, 255), font=font)
        for cls in classes:
            idx = dataset.class_indices(cls)[:instances]
            for j, i in enumerate(idx.tolist()):
                img = dataset.images[i].numpy()
                arr = img[0] if c == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
                tile = Image.fromarray(arr, mode).resize((tw, th), Image.Resampling.NEAREST)
                sheet.paste(tile, (margin + gap + j * (tw + gap), y))
            y += th + gap
        y += group_gap - group_gap // 2

    def write(f) -> None:
        buf = io.BytesIO()
        sheet.save(buf, format="PNG", optimize=True)
        f.write(buf.getvalue())

    return atomic_write(path, write)
