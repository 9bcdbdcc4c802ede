"""Figure 3, ``memory_vs_steps``: peak memory of one meta-iteration (one task) as the
adaptation length K grows, for WarpGrad online and offline (Warp-Leap exact, at the
protocol's shapes) and second-order MAML (at the small shapes ``k_filters``/``k_batch``: at
the protocol's it needs several GB per task).

Besides the peak RSS growth (MB), which the C library's heap can move by more than a small
case's own growth, it records what autograd saves for MAML's differentiable adaptation
(``saved_tensor_mb``) and, on the CPU, the peak of the bytes live tensors hold
(``live_peak_mb``): allocator-independent measures of the same growth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from warpgrad.bench import common
from warpgrad.bench.common import MB, Scale, build_learner, build_model, build_tasks, case, measure

METHODS = ("warpgrad-online", "warpgrad-offline", "maml")


@case("memory_vs_steps")
def case_memory_vs_steps(scale: Scale, method: str, steps: int) -> dict[str, float]:
    """One meta-iteration of one task with K = ``steps``. ``method``: ``warpgrad-online`` or
    ``warpgrad-offline`` (Warp-Leap exact) at the protocol's shapes ``filters``/
    ``batch_size`` (so that activations, not allocator noise, make the peak), ``maml``
    (second order, plain Conv4) at the small shapes ``k_filters``/``k_batch``."""
    if method == "maml":
        name, regime = "maml", "offline"
        filters, batch = scale.k_filters, scale.k_batch
    else:
        name, regime = "warp-leap-exact", method.removeprefix("warpgrad-")
        filters, batch = scale.filters, scale.batch_size
    tasks = build_tasks(batch, 1)
    # warmed up at batch 2: loads the kernels without leaving batch-sized activations
    # resident, which would hide the measured call's own peak (a growth of 0 MB at small K)
    build_learner(name, build_model(filters, name != "maml"), 1, regime).meta_step(
        build_tasks(2, 1))
    learner = build_learner(name, build_model(filters, name != "maml"), steps, regime)
    result = measure(lambda: learner.meta_step(tasks))
    # the other measures run after it, so that their allocations are not part of the
    # resident set it starts from
    if name == "maml":
        result["saved_tensor_mb"] = saved_tensor_bytes(learner, tasks[0]) / MB
    if not common.on_gpu():  # there the device's allocator counts already (peak_device_mb)
        # the same meta-iteration again, from a fresh model, under the profiler
        again = build_learner(name, build_model(filters, name != "maml"), steps, regime)
        result["live_peak_mb"] = live_tensor_peak_bytes(lambda: again.meta_step(tasks)) / MB
    return result


def live_tensor_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak growth of the bytes held by CPU tensors while ``fn()`` runs, from the profiler's
    record of every allocation and free: what tensors hold, not what the C library keeps
    resident (peak RSS, which heap fragmentation moves between runs)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak


def saved_tensor_bytes(learner, task) -> int:
    """Bytes of the tensors autograd saves while MAML's differentiable adaptation runs
    (a memory figure independent of the allocator; counted once per saved tensor)."""
    from warpgrad.engine.adapt import adapt

    total = 0
    seen: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        key = id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    model = learner.model
    theta0 = model.init_theta().detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = adapt(model, theta0, task, learner.loss_fn, learner.optimizer, learner.steps,
                       create_graph=True, generator=torch.Generator().manual_seed(0))
    del result
    return total


def figure(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """The shapes (``filters``, ``batch_size``, ``meta_batch``), a ``note`` saying them and
    ``cases``: method -> K (as a string) -> figures."""
    del meta
    sweep: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        sweep[method] = {}
        for k in scale.k_values:
            log(f"memory {method} K={k} ...")
            sweep[method][str(k)] = common.run_case("memory_vs_steps", scale, method, k)
    return {"filters": scale.k_filters, "batch_size": scale.k_batch, "meta_batch": 1,
            "note": f"one task; WarpGrad = warp-leap exact at Conv4-{scale.filters}, batch "
                    f"{scale.batch_size}; MAML second order on plain Conv4-{scale.k_filters}, "
                    f"batch {scale.k_batch}",
            "cases": sweep}
