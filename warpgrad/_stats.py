"""Summary statistics shared by evaluation and data sanity checks."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_ci(values: Sequence[float], *, keep: bool = False) -> dict:
    """Mean and half-width of the normal-approximation 95% confidence interval, as the
    meta-learning papers report (1.96 standard errors). ``keep`` adds the ``values``
    themselves, in order, so that two methods scored on the same tasks can be compared
    task by task (``warpgrad reproduce``'s paired tests)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    result: dict = {"mean": mean, "ci95": 1.96 * math.sqrt(var / n), "n": n}
    if keep:
        result["values"] = [float(v) for v in values]
    return result
