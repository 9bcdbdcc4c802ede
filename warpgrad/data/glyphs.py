"""The embedded default dataset: letters rendered from the fonts that ship inside matplotlib.

Omniglot's structure without a download: alphabets are Unicode blocks (large blocks cut into
chunks of 20-40 letters), classes are deduplicated letters, instances are renderings in
randomly chosen fonts and styles with stroke and affine variation (and an optional elastic
warp). See ``docs/data.md`` for the recipe and the measured figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._cache import cache_key, load_npz, resolve_cache_dir, save_npz, writable_cache_folder
from ._unicode_blocks import block_of, block_start
from .augment import affine_theta, warp_affine
from .dataset import ClassDataset
from .errors import DataError

__all__ = ["GlyphRecipe", "find_fonts", "load_glyphs", "matplotlib_font_dir"]

RENDER_VERSION = 2
"""Bumped whenever the renderer changes what it draws (part of the cache key)."""

_EXCLUDE_PREFIXES = ("cmex10", "cmsy10", "cmmi10", "STIXNonUni", "STIXSiz", "LastResort")
_ASCII_ONLY_PREFIXES = ("cmr10", "cmb10", "cmti10", "cmss10", "cmtt10")
_PREFERRED = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf",
              "cmr10.ttf")
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
_DEDUP_SIZE = 28
_CHUNK = 512


@dataclass(frozen=True)
class GlyphRecipe:
    """Everything that determines the rendered glyph dataset (and its cache key).

    Args:
        image_size: output images are ``image_size x image_size`` (default 28, like Omniglot).
        instances: images per character (default 20, like Omniglot's drawers).
        seed: seeds font choice and all per-instance variation.
        elastic: elastic-warp strength; 0 turns it off, 1 makes strokes wobble like
            handwriting.
        font_dirs: extra directories searched (recursively) for ``.ttf``/``.otf``/``.ttc``
            fonts; their scripts become new alphabets, their styles new instances.
        matplotlib_fonts: include the fonts in matplotlib's ``mpl-data/fonts/ttf``.
        render_size: side in pixels of the canvas glyphs are drawn and varied on.
        fill: fraction of the canvas the glyph's longer side is fitted to.
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
        scale: range of the random scale factor.
        shear: maximum horizontal shear (uniform in ``[-shear, shear]``).
        shift: maximum shift as a fraction of the image side.
        stroke: maximum stroke change, in 3x3 dilation/erosion steps at ``render_size``
            (thick glyphs are only thinned, thin ones only thickened).
        dedup_threshold: characters whose renderings correlate above this are merged.
        min_fonts: a character must be drawn by at least this many font files.
        min_alphabet_size: blocks with fewer (deduplicated) letters are dropped.
        max_alphabet_size: blocks with more letters are cut in code-point order into chunks
            of ``max_alphabet_size/2 .. max_alphabet_size`` letters (0: never cut).
        blocks: keep only these Unicode blocks (``None``: all); handy for small test sets.
    """

    image_size: int = 28
    instances: int = 20
    seed: int = 0
    elastic: float = 0.0
    font_dirs: tuple[str, ...] = ()
    matplotlib_fonts: bool = True
    render_size: int = 64
    fill: float = 0.8
    rotation: float = 10.0
    scale: tuple[float, float] = (0.8, 1.05)
    shear: float = 0.15
    shift: float = 0.08
    stroke: float = 1.0
    dedup_threshold: float = 0.95
    min_fonts: int = 2
    min_alphabet_size: int = 10
    max_alphabet_size: int = 40
    blocks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "font_dirs", tuple(str(d) for d in self.font_dirs))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.image_size < 4 or self.instances < 1 or self.render_size < 16:
            raise ValueError("need image_size >= 4, instances >= 1, render_size >= 16")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Font:
    path: str
    name: str
    nbytes: int
    coverage: frozenset[int] = field(repr=False)


def matplotlib_font_dir() -> Path:
    """matplotlib's bundled TrueType fonts (``mpl-data/fonts/ttf``)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _excluded(name: str) -> bool:
    return name.startswith(_EXCLUDE_PREFIXES) or "Display" in name


def _font_files(recipe: GlyphRecipe) -> list[Path]:
    files: list[Path] = []
    if recipe.matplotlib_fonts:
        files += sorted(p for p in matplotlib_font_dir().iterdir()
                        if p.suffix.lower() in _FONT_SUFFIXES)
    for d in recipe.font_dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise DataError(f"font directory {root} does not exist (expected a folder of "
                            f".ttf/.otf/.ttc files)")
        files += sorted(p for p in root.rglob("*") if p.suffix.lower() in _FONT_SUFFIXES)
    return [p for p in files if not _excluded(p.name)]


def find_fonts(recipe: GlyphRecipe | None = None) -> list[_Font]:
    """The font files a recipe uses, with the letter code points each one covers."""
    from fontTools.ttLib import TTFont, TTLibError

    recipe = recipe or GlyphRecipe()
    fonts = []
    for path in _font_files(recipe):
        try:
            tt = TTFont(str(path), lazy=True, fontNumber=0)
            cmap = tt.getBestCmap() or {}
            tt.close()
        except (TTLibError, OSError, KeyError, AssertionError, ValueError, IndexError) as exc:
            raise DataError(f"cannot read font file {path}: {exc}") from exc
        cps = {cp for cp in cmap if _is_letter(cp)}
        if path.name.startswith(_ASCII_ONLY_PREFIXES) and path.parent == matplotlib_font_dir():
            cps = {cp for cp in cps if chr(cp).isascii()}  # trust only their A-Z, a-z
        fonts.append(_Font(str(path), path.name, path.stat().st_size, frozenset(cps)))
    if not fonts:
        raise DataError("no font files found: expected matplotlib's mpl-data/fonts/ttf "
                        "or .ttf/.otf files under GlyphRecipe.font_dirs")
    return fonts


def _is_letter(cp: int) -> bool:
    ch = chr(cp)
    # letters only, and no decomposition (drops accented letters, ligatures, math styles,
    # presentation forms and other variants of letters already present)
    return unicodedata.category(ch).startswith("L") and unicodedata.decomposition(ch) == ""


class _Renderer:
    """Draws one character in one font, cropped and fitted onto a square canvas."""

    def __init__(self, fonts: Sequence[_Font], size: int, fill: float) -> None:
        self.fonts = fonts
        self.size = size
        self.fill = fill
        self._pil: dict[int, Any] = {}

    def _font(self, i: int):
        from PIL import ImageFont

        if i not in self._pil:
            try:
                # drawn at twice the canvas and shrunk to fit, so that small letters are
                # not blurred by enlarging
                self._pil[i] = ImageFont.truetype(self.fonts[i].path, size=2 * self.size,
                                                  layout_engine=ImageFont.Layout.BASIC)
            except OSError as exc:
                raise DataError(f"cannot load font file {self.fonts[i].path}: {exc}") from exc
        return self._pil[i]

    def master(self, cp: int, i: int) -> np.ndarray | None:
        """uint8 ``[size, size]`` (strokes 255 on 0), or ``None`` if nothing is drawn."""
        from PIL import Image, ImageDraw

        font = self._font(i)
        ch = chr(cp)
        left, top, right, bottom = font.getbbox(ch)
        if right <= left or bottom <= top:
            return None
        pad = 2
        img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
        ImageDraw.Draw(img).text((pad - left, pad - top), ch, font=font, fill=255)
        box = img.getbbox()
        if box is None:
            return None
        img = img.crop(box)
        w, h = img.size
        if w * h < 4 or np.asarray(img).max() < 64:
            return None
        s = self.fill * self.size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
        canvas = Image.new("L", (self.size, self.size), 0)
        canvas.paste(img, ((self.size - nw) // 2, (self.size - nh) // 2))
        return np.asarray(canvas)


def _downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def _dilate(x: torch.Tensor) -> torch.Tensor:
    """3x3 grey-level dilation (a separable max, faster than ``max_pool2d`` on the CPU)."""
    p = F.pad(x, (1, 1, 1, 1))
    h = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])


def _erode(x: torch.Tensor) -> torch.Tensor:
    """3x3 grey-level erosion (the image outside counts as background)."""
    return -_dilate(-x)


def _select_classes(recipe: GlyphRecipe, fonts: list[_Font], renderer: _Renderer):
    """Letters covered by enough fonts, deduplicated; returns code points and their fonts."""
    n_cover: dict[int, int] = {}
    for f in fonts:
        for cp in f.coverage:
            n_cover[cp] = n_cover.get(cp, 0) + 1
    cps = sorted(cp for cp, n in n_cover.items() if n >= recipe.min_fonts)
    if recipe.blocks is not None:
        wanted = set(recipe.blocks)
        cps = [cp for cp in cps if block_of(cp) in wanted]
    pref = {name: r for r, name in enumerate(_PREFERRED)}
    font_order = sorted(range(len(fonts)), key=lambda i: (pref.get(fonts[i].name, len(pref)), i))
    # one canonical rendering per letter, in the first preferred font that draws it
    canon, kept = [], []
    for cp in cps:
        for i in font_order:
            if cp in fonts[i].coverage:
                m = renderer.master(cp, i)
                if m is not None:
                    canon.append(m)
                    kept.append(cp)
                    break
    if not kept:
        return [], 0
    x = torch.from_numpy(np.stack(canon))[:, None].float()
    x = _downsample(x, _DEDUP_SIZE).flatten(1)
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    corr = (x @ x.T).numpy()
    keep = np.zeros(len(kept), dtype=bool)
    for j in range(len(kept)):  # code-point order: Latin A stays, Greek Alpha goes
        if not keep.any() or corr[j, keep].max() <= recipe.dedup_threshold:
            keep[j] = True
    return [cp for cp, k in zip(kept, keep, strict=True) if k], len(kept)


def _alphabets(recipe: GlyphRecipe, cps: list[int]) -> list[tuple[str, str, list[int]]]:
    """``(alphabet name, block, code points)`` in block then code-point order."""
    by_block: dict[str, list[int]] = {}
    for cp in cps:
        by_block.setdefault(block_of(cp), []).append(cp)
    out = []
    for block in sorted(by_block, key=lambda b: (block_start(b), b)):
        members = sorted(by_block[block])
        if len(members) < recipe.min_alphabet_size:
            continue
        m = recipe.max_alphabet_size
        k = math.ceil(len(members) / m) if m and len(members) > m else 1
        for j, chunk in enumerate(np.array_split(np.array(members), k)):
            name = block if k == 1 else f"{block} {j + 1}/{k}"
            out.append((name, block, [int(c) for c in chunk]))
    return out


def _render(recipe: GlyphRecipe, fonts: list[_Font], renderer: _Renderer,
            classes: list[int]) -> tuple[np.ndarray, list[list[str]]]:
    """uint8 ``[len(classes) * instances, 1, H, W]``, class-major; and each class's fonts."""
    rng = np.random.default_rng(recipe.seed)
    masters: list[np.ndarray] = []
    master_of: list[np.ndarray] = []
    class_fonts: list[list[str]] = []
    for cp in classes:
        ids = []
        for i, f in enumerate(fonts):
            if cp in f.coverage:
                m = renderer.master(cp, i)
                if m is not None:
                    ids.append((i, len(masters)))
                    masters.append(m)
        class_fonts.append([fonts[i].name for i, _ in ids])
        pick = rng.integers(len(ids), size=recipe.instances)
        master_of.append(np.array([ids[p][1] for p in pick]))
    m = torch.from_numpy(np.stack(masters))[:, None]  # uint8 [M, 1, S, S]
    # stroke weight: the share of ink that survives a 3x3 erosion (high = bold strokes)
    survive = torch.cat([
        _erode(c.float()).sum((1, 2, 3)) / c.float().sum((1, 2, 3)).clamp_min(1e-6)
        for c in m.split(_CHUNK)])
    index = torch.from_numpy(np.concatenate(master_of))
    n = len(index)
    g = torch.Generator().manual_seed(recipe.seed)
    u = torch.rand(n, 6, generator=g, dtype=torch.float64)
    size = recipe.image_size
    out = np.empty((n, 1, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        idx = index[sl]
        x = m[idx].float().div_(255.0)
        # stroke: thin heavy glyphs, thicken light ones, never the other way round
        s = (2 * u[sl, 0] - 1).float() * recipe.stroke
        heavy = survive[idx] > 0.55
        light = survive[idx] < 0.75
        s = torch.where(s > 0, s * light, s * heavy)[:, None, None, None]
        dil = _dilate(x)
        ero = _erode(x)
        x = torch.where(s > 0, x + s * (dil - x), x + s * (x - ero))
        # affine: rotation, scale, shear, shift
        angle = (2 * u[sl, 1] - 1) * math.radians(recipe.rotation)
        lo, hi = recipe.scale
        scale = lo + (hi - lo) * u[sl, 2]
        shear = (2 * u[sl, 3] - 1) * recipe.shear
        shift_x = (2 * u[sl, 4] - 1) * recipe.shift
        shift_y = (2 * u[sl, 5] - 1) * recipe.shift
        theta = affine_theta(angle, scale, shift_x, shift_y, shear).float()
        disp = None
        if recipe.elastic > 0:
            field_ = torch.randn(len(idx), 2, 5, 5, generator=g) * (0.045 * recipe.elastic)
            disp = F.interpolate(field_, size=x.shape[-2:], mode="bicubic",
                                 align_corners=True).permute(0, 2, 3, 1)
        x = warp_affine(x, theta, disp)
        x = _downsample(x, size)
        out[sl] = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return out, class_fonts


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run small batched tensor ops on ``n`` threads (restored afterwards): on a busy
    machine, oversubscribed intra-op threads make the render several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _spec(recipe: GlyphRecipe, fonts: list[_Font]) -> dict[str, Any]:
    import PIL

    return {
        "recipe": recipe.to_dict(),
        "version": RENDER_VERSION,
        "pillow": PIL.__version__,
        "fonts": [[f.name, f.nbytes] for f in fonts],
    }


def glyph_cache_path(recipe: GlyphRecipe | None = None,
                     cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`load_glyphs` caches ``recipe``'s images."""
    recipe = recipe or GlyphRecipe()
    key = cache_key(_spec(recipe, find_fonts(recipe)))
    return resolve_cache_dir(cache_dir) / "glyphs" / f"glyphs-{key}.npz"


def load_glyphs(
    recipe: GlyphRecipe | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> ClassDataset:
    """The glyphs dataset: rendered on first use, then read from the cache.

    Returns a :class:`ClassDataset` with ``images`` uint8 ``[classes * instances, 1, H, W]``
    (strokes 255 on a 0 background), one class per letter (named by its Unicode name), and
    ``alphabets`` (Unicode blocks, or chunks ``"<block> j/k"`` of large blocks). ``meta``
    holds per-class ``char``, ``block`` and ``fonts``, the ``recipe``, ``render_seconds``
    (0 when read from the cache) and ``cache_path``.

    The cache file ``<cache_dir>/glyphs/glyphs-<key>.npz`` is keyed by the recipe, the
    renderer version, Pillow's version and the font files' names and sizes; ``cache_dir``
    defaults to ``$WARPGRAD_CACHE`` or ``~/.cache/warpgrad``.
    """
    recipe = recipe or GlyphRecipe()
    fonts = find_fonts(recipe)
    spec = _spec(recipe, fonts)
    path = resolve_cache_dir(cache_dir) / "glyphs" / f"glyphs-{cache_key(spec)}.npz"
    cached = load_npz(path) if use_cache else None
    if cached is not None:
        problem = _cache_problem(cached, recipe)
        if problem is None:
            info = json.loads(str(cached["info"]))
            return _dataset(cached["images"], cached["labels"], info, 0.0, path)
        warnings.warn(f"ignoring invalid glyph cache {path} ({problem}); rebuilding it",
                      stacklevel=2)
    if use_cache:
        writable_cache_folder(path.parent)  # say so now, not after rendering

    t0 = time.perf_counter()
    renderer = _Renderer(fonts, max(recipe.render_size, recipe.image_size), recipe.fill)
    with _torch_threads(1):
        cps, n_candidates = _select_classes(recipe, fonts, renderer)
    groups = _alphabets(recipe, cps)
    classes = [cp for _, _, members in groups for cp in members]
    if not classes:
        raise DataError(f"glyph recipe {recipe} selects no characters (blocks={recipe.blocks})")
    with _torch_threads(1):
        images, class_fonts = _render(recipe, fonts, renderer, classes)
    seconds = time.perf_counter() - t0
    alphabets = [name for name, _, members in groups for _ in members]
    blocks = [block for _, block, members in groups for _ in members]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), recipe.instances)
    info = {
        **spec,
        "class_names": [unicodedata.name(chr(cp)) for cp in classes],
        "chars": [chr(cp) for cp in classes],
        "alphabets": alphabets,
        "blocks": blocks,
        "class_fonts": class_fonts,
        "candidates": n_candidates,
        "render_seconds": seconds,
    }
    if use_cache:
        save_npz(path, {"images": images, "labels": labels, "info": np.array(json.dumps(info))})
    return _dataset(images, labels, info, seconds, path if use_cache else None)


def _cache_problem(cached: dict[str, np.ndarray], recipe: GlyphRecipe) -> str | None:
    """What is wrong with a glyph cache's arrays, or ``None`` when they are what
    :func:`load_glyphs` wrote for ``recipe``."""
    missing = {"images", "labels", "info"} - cached.keys()
    if missing:
        return f"no {', '.join(sorted(missing))}"
    try:
        info = json.loads(str(cached["info"]))
    except ValueError as exc:
        return f"metadata is not JSON: {exc}"
    keys = ("class_names", "chars", "alphabets", "blocks", "class_fonts", "recipe",
            "candidates", "render_seconds")
    if not isinstance(info, dict) or not all(k in info for k in keys):
        return "metadata lacks " + ", ".join(k for k in keys if not isinstance(info, dict)
                                             or k not in info)
    images, labels, n = cached["images"], cached["labels"], len(info["class_names"])
    size = recipe.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (1, size, size):
        return f"images are {images.dtype} {list(images.shape)}, expected uint8 [N, 1, {size}, " \
               f"{size}]"
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                           np.integer):
        return f"labels are {labels.dtype} {list(labels.shape)}, expected [{len(images)}] integers"
    if len(labels) and (labels.min() < 0 or labels.max() >= n):
        return f"labels outside 0..{n - 1}"
    if any(len(info[k]) != n for k in ("chars", "alphabets", "blocks", "class_fonts")):
        return "metadata lists of different lengths"
    return None


def _dataset(images: np.ndarray, labels: np.ndarray, info: dict[str, Any], seconds: float,
             path: Path | None) -> ClassDataset:
    meta = {
        "char": info["chars"],
        "block": info["blocks"],
        "fonts": info["class_fonts"],
        "recipe": info["recipe"],
        "candidates": info["candidates"],
        "render_seconds": seconds,
        "first_render_seconds": info["render_seconds"],
        "cache_path": None if path is None else str(path),
    }
    return ClassDataset(images, labels, info["class_names"], info["alphabets"], "glyphs", meta)
