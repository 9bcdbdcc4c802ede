"""Figures 4 and 5: the two hot operations of a Warp-Leap meta-iteration on their own.

4. ``warped_step``: one adaptation step (data draw, forward, backward, SGD step) of Conv4
   with warps versus without, in ms, and their ratio: what the warp layers cost.
5. ``batched_objective``: the offline WarpGrad objective per buffer point, ``points``
   points in one ``torch.func.vmap`` call versus one point per update (ms per point, ratio).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from warpgrad.bench import common
from warpgrad.bench.common import (
    INNER_LR,
    SWITCHES,
    Scale,
    build_model,
    build_tasks,
    case,
    sync,
)


@case("warped_step")
def case_warped_step(scale: Scale) -> dict[str, float]:
    """ms per adaptation step of Conv4 with warps (``warped_ms``) and without
    (``plain_ms``), batch ``batch_size``, ``step_reps`` steps each; the two alternate to
    share any drift."""
    from warpgrad.engine.adapt import adapt
    from warpgrad.engine.inner_sgd import InnerSGD

    task = build_tasks(scale.batch_size, 1)[0]
    models = {"warped": build_model(scale.filters, True),
              "plain": build_model(scale.filters, False)}
    times: dict[str, float] = {"warped": 0.0, "plain": 0.0}
    for rep in range(3):  # rep 0 warms up
        for name, model in models.items():
            opt = InnerSGD(model.task_spec, INNER_LR).to(SWITCHES["device"])
            sync()
            start = time.perf_counter()
            adapt(model, model.init_theta(), task, F.cross_entropy, opt,
                  1 if rep == 0 else scale.step_reps,
                  generator=torch.Generator().manual_seed(rep))
            sync()
            if rep:
                times[name] += time.perf_counter() - start
    n = 2 * scale.step_reps
    return {"warped_ms": 1e3 * times["warped"] / n, "plain_ms": 1e3 * times["plain"] / n}


@case("batched_objective")
def case_batched_objective(scale: Scale, variant: str) -> dict[str, float]:
    """ms per buffer point of the offline WarpGrad update of ``variant``, ``points`` points
    in one vmap call (``batched_ms_per_point``) versus one point per update
    (``sequential_ms_per_point``), over the points of one task's adaptation."""
    from warpgrad.algorithms.warpgrad import WarpGrad
    from warpgrad.engine.adapt import adapt
    from warpgrad.engine.buffer import ReplayBuffer
    from warpgrad.engine.inner_sgd import InnerSGD

    task = build_tasks(scale.batch_size, 1)[0]
    model = build_model(scale.filters, True)
    opt = InnerSGD(model.task_spec, INNER_LR).to(SWITCHES["device"])
    n = scale.points
    buffer = ReplayBuffer(n, model.task_spec.numel, device=SWITCHES["device"])
    adapt(model, model.init_theta(), task, F.cross_entropy, opt, n - 1,
          observers=[buffer.recorder(0)], generator=torch.Generator().manual_seed(0))
    objectives = {"sequential": WarpGrad(variant, "offline", points_per_update=1),
                  "batched": WarpGrad(variant, "offline", points_per_update=n, batched=True)}
    times = {"sequential": 0.0, "batched": 0.0}
    for rep in range(2):  # rep 0 warms up
        for name, objective in objectives.items():
            # lr 0: φ stays where it is, so both objectives see the same points
            meta = model.backend.optimizer(
                "sgd", [{"params": list(model.warp_parameters().values())}], 0.0)
            sync()
            start = time.perf_counter()
            objective.offline_update(model, F.cross_entropy, opt, buffer, [task], meta,
                                     torch.Generator().manual_seed(rep))
            sync()
            if rep:
                times[name] = time.perf_counter() - start
    return {"sequential_ms_per_point": 1e3 * times["sequential"] / n,
            "batched_ms_per_point": 1e3 * times["batched"] / n}


def warped_step(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]
                ) -> dict[str, Any]:
    """Figure 4: ``warped_ms``, ``plain_ms`` and their ``ratio``."""
    del meta
    log("warped vs plain step ...")
    r = common.run_case("warped_step", scale)
    r["ratio"] = r["warped_ms"] / r["plain_ms"]
    return r


def batched_objective(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]
                      ) -> dict[str, Any]:
    """Figure 5, per variant: the two ms-per-point figures, their ``ratio`` and
    ``points``."""
    del meta
    batched = {}
    for variant in ("exact", "first-order"):
        log(f"batched objective {variant} ...")
        r = common.run_case("batched_objective", scale, variant)
        r["ratio"] = r["batched_ms_per_point"] / r["sequential_ms_per_point"]
        r["points"] = scale.points
        batched[variant] = r
    return batched
