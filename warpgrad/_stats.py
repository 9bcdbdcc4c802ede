"""Summary statistics shared by evaluation and data sanity checks."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval, as the
    meta-learning papers report (1.96 standard errors)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return {"mean": mean, "ci95": 1.96 * math.sqrt(var / n), "n": n}
