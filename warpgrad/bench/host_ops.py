"""Figure 9, ``host_ops``: the operators PyTorch dispatches from the host in one first-order
Warp-Leap meta-iteration over the whole meta-batch, outside the passes a GPU replays from
CUDA graphs (:func:`warpgrad.accel.cuda_graphs.rehearsing`: on a CPU graphed passes run
eagerly and are not counted). On a GPU each is a kernel launch or host-side work the device
waits on, where eager PyTorch is bound by the host. Counted, not timed: the same on any
machine.

The modes are the accelerator's (:data:`HOST_OPS_MODES`); with ``--reference`` the figure
counts the reference core alone (:data:`REFERENCE_MODE`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from warpgrad.bench import common
from warpgrad.bench.common import SWITCHES, Scale, build_learner, build_model, build_tasks, case

HOST_OPS_MODES: dict[str, dict[str, Any]] = {
    "eager, batches one at a time": {"cuda_graphs": False, "prefetch_mb": 0},
    "CUDA graphs, batches one at a time": {"cuda_graphs": True, "prefetch_mb": 0},
    "CUDA graphs, batches drawn ahead (default)": {"cuda_graphs": True, "prefetch_mb": None},
}
"""Figure 9's ways of running the meta-iteration (the same result): the
:class:`~warpgrad.accel.AcceleratedBackend`'s ``cuda_graphs`` and ``prefetch_mb`` (``0``:
one batch drawn at a time; ``None``: the backend's window of batches drawn ahead)."""

REFERENCE_MODE = "reference core, batches one at a time"
"""Figure 9's one mode under ``--reference``."""

HOST_OPS_FILTERS = 4
"""Figure 9's Conv4 width: operator counts do not depend on it, and a narrow net is quick."""


@case("host_ops")
def case_host_ops(scale: Scale, mode: str) -> dict[str, float]:
    """Operators counted in the second of two meta-iterations (the first captures the
    graphs) at the scale's batch and K, Conv4-:data:`HOST_OPS_FILTERS`: ``ops`` in all,
    ``per_step_or_point`` (a task has K adaptation steps and K + 1 buffer points) and
    ``scalar_reads``, values read back to Python (``.item()``, ``int()``, an ``if`` on a
    tensor), each a host-device synchronisation when the tensor is on a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from warpgrad.accel.cuda_graphs import rehearsing

    class HostOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = self.reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not rehearsing():
                self.ops += 1
                self.reads += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    if mode == REFERENCE_MODE:
        SWITCHES["reference"] = True
        model = build_model(HOST_OPS_FILTERS)
    else:
        SWITCHES["reference"] = False
        model = build_model(HOST_OPS_FILTERS, **HOST_OPS_MODES[mode])
    tasks = build_tasks(scale.batch_size, scale.meta_batch)
    learner = build_learner("warp-leap-first-order", model, scale.steps)
    learner.meta_step(tasks)
    with HostOps() as counted:
        learner.meta_step(tasks)
    units = scale.meta_batch * (2 * scale.steps + 1)  # K steps and K + 1 points per task
    return {"ops": counted.ops, "per_step_or_point": counted.ops / units,
            "scalar_reads": counted.reads}


def modes(scale: Scale) -> list[str]:
    """The modes figure 9 runs at ``scale``."""
    return [REFERENCE_MODE] if scale.reference else list(HOST_OPS_MODES)


def figure(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Mode -> counts."""
    del meta
    host_ops = {}
    for mode in modes(scale):
        log(f"host operators, {mode} ...")
        host_ops[mode] = common.run_case("host_ops", scale, mode)
        log(f"  {host_ops[mode]['per_step_or_point']:.1f} per step or point")
    return host_ops
