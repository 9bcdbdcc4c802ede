"""The errors the command turns into one line (defined here, away from torch, so that the
command can name them without importing it)."""

from __future__ import annotations


class RunDirError(ValueError):
    """A run directory (or one of its files) that cannot be used; the message names it."""


class CollectiveError(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""


class LaunchError(ValueError):
    """A launch that cannot work: a meta-batch or a checkpoint that does not fit the number
    of processes, a bad collective timeout."""
