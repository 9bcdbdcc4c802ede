"""The one exception the data loaders raise."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing data on disk. The message names the file and what was expected."""
