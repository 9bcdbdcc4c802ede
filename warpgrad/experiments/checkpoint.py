"""Atomic checkpoint and JSON writes: a run killed mid-write never leaves a broken file.

The guarded writers live in :mod:`warpgrad.experiments.rundir`; this module names them for
the code that only saves and loads files.
"""

from __future__ import annotations

from warpgrad.experiments.rundir import load_checkpoint, save_checkpoint, write_json

__all__ = ["load_checkpoint", "save_checkpoint", "write_json"]
