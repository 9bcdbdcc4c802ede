"""Figure 10, ``convolutions``: the convolutions of the Warp-Leap meta-iteration (exact and
first-order) alone, every call replayed on its own (:mod:`warpgrad.bench.conv_calls`):
seconds, GFLOP, GFLOP/s, and the meta-iteration's time over theirs. On a machine where
convolutions dominate, the floor under any time target.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from warpgrad.bench import common
from warpgrad.bench.common import (
    SWITCHES,
    Scale,
    build_learner,
    build_model,
    build_tasks,
    case,
    is_plain,
)


def convolution_calls(scale: Scale, method: str, steps: int) -> Counter:
    """The convolution calls (:func:`~warpgrad.bench.conv_calls.record_convolutions`) of one
    task's meta-iteration of ``method`` with K = ``steps``, run eagerly (a CUDA graph's
    replay hides its calls): the same convolutions, layouts and dtypes as the case's other
    switches give. Leaves :data:`~warpgrad.bench.common.SWITCHES` as it found them."""
    from warpgrad.bench.conv_calls import record_convolutions

    saved = dict(SWITCHES)
    SWITCHES.update(cuda_graphs=False)
    try:
        tasks = build_tasks(scale.batch_size, 1)
        learner = build_learner(method, build_model(scale.filters, not is_plain(method)),
                                steps)
        return record_convolutions(lambda: learner.meta_step(tasks))
    finally:
        SWITCHES.update(saved)


@case("convolutions")
def case_convolutions(scale: Scale, method: str) -> dict[str, float]:
    """The meta-iteration's convolutions alone, replayed call by call
    (:func:`~warpgrad.bench.conv_calls.replay`), for the whole meta-batch: ``seconds``,
    ``gflop``, ``gflop_per_s``, ``calls`` and ``distinct`` calls. Every adaptation step adds
    one step and one buffer point of the same shapes, so the calls of K steps are those of
    K = 1 plus K - 1 times what K = 2 adds (recorded at K = 1 and 2), and every task of the
    meta-batch makes the same calls as the first."""
    from warpgrad.bench.conv_calls import replay

    one, two = (convolution_calls(scale, method, k) for k in (1, 2))
    calls = Counter()
    for call in one.keys() | two.keys():
        count = one[call] + (scale.steps - 1) * (two[call] - one[call])
        if count < 0:
            raise RuntimeError(f"{method}: a convolution call is made fewer times at K = 2 "
                               "than at K = 1; the calls are not linear in K")
        calls[call] = count * scale.meta_batch
    r = replay(+calls, SWITCHES["device"])
    return {"seconds": r.seconds, "gflop": r.flops / 1e9,
            "gflop_per_s": r.flops / 1e9 / r.seconds if r.seconds else 0.0,
            "calls": r.calls, "distinct": r.distinct}


def figure(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Per method (Warp-Leap exact and first-order) the replay's figures and, when figure 1
    ran in the same suite (``meta``), the meta-iteration's seconds and their ``ratio``."""
    floor = {}
    for method in common.META_METHODS[:2]:
        log(f"convolutions alone {method} ...")
        r = common.run_case("convolutions", scale, method)
        if method in meta:  # measured in this run: how far above its convolutions it is
            r["meta_iteration_seconds"] = meta[method]["seconds"]
            r["ratio"] = meta[method]["seconds"] / r["seconds"]
        floor[method] = r
        log(f"  {r['seconds']:.1f} s, {r['gflop']:.0f} GFLOP at {r['gflop_per_s']:.0f} "
            "GFLOP/s")
    return floor
