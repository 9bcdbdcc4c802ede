"""Figure 8, ``training`` (run only when named): real Warp-Leap meta-iterations over the
whole meta-batch, nothing extrapolated, with φ updated once per buffer point (the paper's
offline objective) or once per ``meta_batch`` points evaluated in one ``torch.func.vmap``
call. The GPU goal (1,000 meta-iterations in an hour) is judged on it most directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from warpgrad.bench import common
from warpgrad.bench.common import Scale, build_learner, build_model, build_tasks, case, measure

TRAINING_MODES: dict[str, dict[str, bool]] = {
    "one point per update": {"batched_points": False},
    "points batched": {"batched_points": True},
}
"""Figure 8's ways of running a meta-iteration. "one point per update" is the original
semantics (one φ update per buffer point); "points batched" updates φ once per
``meta_batch`` points, evaluated in one vmap call (another φ trajectory, fewer passes)."""


@case("training")
def case_training(scale: Scale, variant: str, mode: str) -> dict[str, float]:
    """One real Warp-Leap meta-iteration of ``variant`` over the whole meta-batch in one of
    :data:`TRAINING_MODES`: seconds and peak memory (MB)."""
    options = TRAINING_MODES[mode]
    tasks = build_tasks(scale.batch_size, scale.meta_batch)
    per_update = scale.meta_batch if options["batched_points"] else 1

    def learner(steps: int):
        return build_learner(f"warp-leap-{variant}", build_model(scale.filters), steps,
                             points_per_update=per_update)

    learner(1).meta_step(tasks)  # warm-up at the meta-batch's shapes (vmap, kernels, graphs)
    timed = learner(scale.steps)
    return measure(lambda: timed.meta_step(tasks))


def figure(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Variant -> mode -> figures."""
    del meta
    training: dict[str, dict[str, Any]] = {}
    for variant in ("first-order", "exact"):
        training[variant] = {}
        for mode in TRAINING_MODES:
            log(f"whole meta-batch {variant}, {mode} ...")
            r = common.run_case("training", scale, variant, mode)
            training[variant][mode] = r
            log(f"  {r['seconds']:.2f} s")
    return training
