"""Cache locations, cache keys and atomic writes.

Every cache file is written to a temporary file in the same directory and moved into place
with :func:`os.replace`, so an interrupted first run never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from warpgrad._files import atomic_write

__all__ = ["atomic_write", "cache_key", "default_cache_dir", "load_npz", "save_npz"]


def default_cache_dir() -> Path:
    """``$WARPGRAD_CACHE`` if set, else ``~/.cache/warpgrad``."""
    env = os.environ.get("WARPGRAD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "warpgrad"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def writable_cache_folder(folder: Path) -> Path:
    """Create ``folder`` (a cache's own folder) or raise ``DataError`` saying why it cannot
    hold a cache (a file in the way, no permission), before anything is built for it."""
    from .errors import DataError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        why = f"{blocker} is a file, not a folder" if blocker.is_file() else exc.strerror
        raise DataError(f"cannot use cache folder {folder}: {why}; set WARPGRAD_CACHE to a "
                        "writable folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"cannot use cache folder {folder}: it is read-only; set "
                        "WARPGRAD_CACHE to a writable folder")
    return folder


def cache_key(spec: Mapping[str, Any], length: int = 16) -> str:
    """A short stable hash of a JSON-serialisable description of what the cache holds."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
             compress: bool = True) -> Path:
    """Write ``arrays`` to ``path`` as ``.npz``, atomically."""
    saver = np.savez_compressed if compress else np.savez
    return atomic_write(path, lambda f: saver(f, **arrays))


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray] | None:
    """Read a cache written by :func:`save_npz`; ``None`` (with a warning) if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as exc:
        warnings.warn(f"ignoring unreadable cache {path} ({exc}); rebuilding it", stacklevel=3)
        return None
