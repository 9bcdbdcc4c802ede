"""Paired comparisons and verdicts: is "method A beats method B" supported by the runs?

A comparison pairs two methods' scores on the same units (a test task of one seed's run, or
a whole seed), takes the per-unit differences d (oriented so that d > 0 favours the claim),
and reports their mean, a 95% Student-t confidence interval and the two-sided p-value of the
paired t-test. The verdict:

- **holds**: p < 0.05 and the mean difference favours the claim;
- **does not hold**: p < 0.05 against the claim, or the whole 95% CI lies below ``margin``
  (the smallest difference the claim is about: whatever the truth, it is not the claimed
  gain);
- **inconclusive**: neither; more seeds or a longer budget could decide it.

Pure Python (no scipy): the t distribution comes from the regularised incomplete beta
function, by its continued fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
ALPHA = 0.05
TEST_NAME = "paired t-test, two-sided"


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast below the mode
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                 + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with ``df`` degrees of freedom."""
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 2.0 * (1.0 - q):
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_two_sided_p(middle, df) > 2.0 * (1.0 - q):
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: ``better`` against ``baseline`` on ``metric``.

    ``mean_difference`` and ``ci95`` (low, high) are in the metric's units, oriented so that
    positive favours ``better``; ``units`` says what was paired (e.g. "test task x seed")
    and ``n`` how many pairs."""

    better: str
    baseline: str
    metric: str
    units: str
    n: int
    mean_difference: float
    ci95: tuple[float, float]
    p_value: float
    margin: float
    verdict: str
    test: str = TEST_NAME

    def to_json(self) -> dict[str, Any]:
        """As a JSON object; an unbounded CI (fewer than 2 pairs) is ``null``."""
        bounded = all(math.isfinite(v) for v in self.ci95)
        return {**asdict(self), "ci95": list(self.ci95) if bounded else None}


def compare(better: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool,
            margin: float, names: tuple[str, str] = ("A", "B"), metric: str = "",
            units: str = "") -> Comparison:
    """The paired comparison of ``better`` against ``baseline`` (same units, same order).

    ``margin`` (> 0, in the metric's units) is the smallest difference the claim means;
    a CI entirely below it says the claim does not hold. Fewer than 2 pairs, or no spread
    at all with a zero mean, is inconclusive."""
    if len(better) != len(baseline):
        raise ValueError(f"paired scores must match one to one: {len(better)} against "
                         f"{len(baseline)}")
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (a - b) for a, b in zip(better, baseline)]
    n = len(diffs)
    mean = sum(diffs) / n if n else 0.0
    if n < 2:
        return Comparison(*names, metric, units, n, mean, (-math.inf, math.inf), 1.0, margin,
                          INCONCLUSIVE)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        ci = (mean, mean)
    else:
        p = t_two_sided_p(mean / se, n - 1)
        half = t_quantile(0.975, n - 1) * se
        ci = (mean - half, mean + half)
    return Comparison(*names, metric, units, n, mean, ci, p, margin, verdict(mean, ci, p, margin))


def verdict(mean: float, ci: tuple[float, float], p: float, margin: float) -> str:
    """holds / does not hold / inconclusive (see the module docstring)."""
    if p < ALPHA and mean > 0:
        return HOLDS
    if (p < ALPHA and mean < 0) or ci[1] < margin:
        return FAILS
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of several comparisons holds when all hold and fails when any fails."""
    if not verdicts:
        return INCONCLUSIVE
    if any(v == FAILS for v in verdicts):
        return FAILS
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return INCONCLUSIVE
