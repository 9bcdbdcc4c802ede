"""Atomic checkpoint and JSON writes: a run killed mid-write never leaves a broken file."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from warpgrad._files import atomic_write


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (trusted, our own files)."""
    try:
        return torch.load(path, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable warpgrad checkpoint: {error}") from error


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Pretty JSON to ``path``, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
