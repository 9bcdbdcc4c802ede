"""Command line: ``python -m warpgrad.data {contact-sheet,stats} ...``.

* ``contact-sheet OUT.png``: a PNG grid of samples (glyphs by default, or ``--omniglot ROOT``,
  ``--mini-imagenet ROOT``, ``--tiered-imagenet ROOT``).
* ``stats``: the glyph dataset's size, render time, cache size, and pixel-space
  nearest-neighbour accuracy on meta-test alphabets.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .contact import contact_sheet
from .dataset import ClassDataset, split_by_alphabet
from .glyphs import GlyphRecipe, glyph_cache_path, load_glyphs
from .imagenet import load_mini_imagenet, load_tiered_imagenet
from .omniglot import load_omniglot
from .sampling import FewShotSampler, nearest_neighbour_accuracy


def _recipe(args: argparse.Namespace) -> GlyphRecipe:
    return GlyphRecipe(image_size=args.image_size, instances=args.instances, seed=args.seed,
                       elastic=args.elastic, font_dirs=tuple(args.font_dir),
                       blocks=tuple(args.block) if args.block else None)


def _dataset(args: argparse.Namespace) -> ClassDataset:
    if args.omniglot:
        return load_omniglot(args.omniglot, cache_dir=args.cache_dir)
    if args.mini_imagenet:
        return load_mini_imagenet(args.mini_imagenet, args.split, cache_dir=args.cache_dir)
    if args.tiered_imagenet:
        return load_tiered_imagenet(args.tiered_imagenet, args.split, cache_dir=args.cache_dir)
    return load_glyphs(_recipe(args), cache_dir=args.cache_dir)


def _stats(args: argparse.Namespace) -> dict:
    recipe = _recipe(args)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir if args.cache_dir is not None else tmp
        if args.fresh:
            glyph_cache_path(recipe, cache).unlink(missing_ok=True)
        t0 = time.perf_counter()
        ds = load_glyphs(recipe, cache_dir=cache)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = load_glyphs(recipe, cache_dir=cache)
        cached = time.perf_counter() - t0
        cache_path = Path(ds.meta["cache_path"])
        cache_mb = cache_path.stat().st_size / 2**20
    counts = {}
    for a in ds.alphabet_names():
        counts[a] = len(ds.classes_of(a))
    splits = split_by_alphabet(ds, seed=args.split_seed)
    out = {
        "recipe": recipe.to_dict(),
        "candidate_letters": ds.meta["candidates"],
        "alphabets": len(counts),
        "alphabets_with_20+": sum(n >= 20 for n in counts.values()),
        "classes": ds.num_classes,
        "classes_in_20+_alphabets": sum(n for n in counts.values() if n >= 20),
        "unicode_blocks": len(set(ds.meta["block"])),
        "instances": len(ds),
        "image_shape": list(ds.image_shape),
        "load_seconds_first": round(first, 2),
        "render_seconds": round(ds.meta["first_render_seconds"], 2),
        "load_seconds_cached": round(cached, 3),
        "cache_mb": round(cache_mb, 2),
        "split": {k: len(splits.record[k]) for k in ("train", "val", "test")},
        "meta_test_classes": splits.test.num_classes,
    }
    for n_way, k_shot in ((5, 1), (5, 5), (20, 1), (20, 5)):
        sampler = FewShotSampler(splits.test, n_way, k_shot, k_query=5)
        acc, ci = nearest_neighbour_accuracy(sampler, args.episodes, seed=args.seed)
        out[f"1nn_{n_way}way_{k_shot}shot"] = f"{100 * acc:.1f} ± {100 * ci:.1f}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warpgrad.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sheet = sub.add_parser("contact-sheet", help="write a PNG grid of samples")
    sheet.add_argument("out", type=Path)
    sheet.add_argument("--omniglot", metavar="ROOT")
    sheet.add_argument("--mini-imagenet", metavar="ROOT")
    sheet.add_argument("--tiered-imagenet", metavar="ROOT")
    sheet.add_argument("--split", default="train")
    sheet.add_argument("--alphabets", type=int, default=12)
    sheet.add_argument("--classes", type=int, default=3, help="classes per alphabet")
    sheet.add_argument("--columns", type=int, default=12, help="instances per class")
    sheet.add_argument("--zoom", type=int, default=2)
    stats = sub.add_parser("stats", help="glyph dataset size, timing, 1-NN sanity accuracy")
    stats.add_argument("--episodes", type=int, default=1000)
    stats.add_argument("--split-seed", type=int, default=0)
    stats.add_argument("--fresh", action="store_true",
                       help="delete the recipe's cache first, so the render is timed")
    for p in (sheet, stats):
        p.add_argument("--cache-dir", default=None,
                       help="default $WARPGRAD_CACHE or ~/.cache/warpgrad (stats: a temp dir)")
        p.add_argument("--image-size", type=int, default=28)
        p.add_argument("--instances", type=int, default=20)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--elastic", type=float, default=0.0)
        p.add_argument("--font-dir", action="append", default=[],
                       help="extra folder of .ttf/.otf fonts (repeatable)")
        p.add_argument("--block", action="append", default=[],
                       help="keep only this Unicode block (repeatable; default: all)")
    args = parser.parse_args(argv)
    if args.command == "contact-sheet":
        ds = _dataset(args)
        path = contact_sheet(ds, args.out, n_alphabets=args.alphabets,
                             classes_per_alphabet=args.classes, instances=args.columns,
                             zoom=args.zoom, seed=args.seed)
        print(f"wrote {path} ({ds})")
    else:
        print(json.dumps(_stats(args), indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
