"""Figure 11, ``scale_out`` (run only when named): task-parallel meta-training on
``torch.distributed`` (:mod:`warpgrad.distributed`). Meta-iterations per second over the
whole meta-batch for 1 and 2 processes (Gloo on the CPU; on a GPU machine one process per
GPU, NCCL, as many as there are up to 2), and the seconds per meta-iteration spent in
collectives: the gradient all-reduces, the statistics' all-gather and any wait for a slower
rank there.

Each world size runs in fresh processes spawned for it, which rendezvous at a store this
process hosts (as torchrun's agent does). On the CPU each of ``n`` processes gets
``cores / n`` threads unless ``--threads`` fixes them, so both world sizes use the machine.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from warpgrad.bench import common
from warpgrad.bench.common import Scale

SCALE_OUT_METHODS = ("warp-leap-first-order", "leap")
"""Figure 11's methods: WarpGrad's offline objective (one point per φ update, so one
all-reduce per point) and a method with one all-reduce per meta-iteration."""

_TIMEOUT_S = 600


def world_sizes(device: str) -> tuple[int, ...]:
    """The world sizes figure 11 measures on ``device``: 1 and 2 on the CPU; on CUDA one
    process per GPU, 1 and, with two GPUs or more, 2."""
    if device.startswith("cuda"):
        return (1, 2) if torch.cuda.device_count() >= 2 else (1,)
    return (1, 2)


def _rank(rank: int, world: int, rendezvous: dict[str, str], scale: Scale, iterations: int,
          threads: int, out: str) -> None:
    """One rank: every method's warm-up, then ``iterations`` timed meta-iterations on its
    share of the meta-batch; rank 0 writes every rank's figures to ``out``."""
    from warpgrad import distributed

    os.environ.update(rendezvous, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    common.use_switches(scale)
    distributed.init_from_env()
    tasks = distributed.shard(common.build_tasks(scale.batch_size, scale.meta_batch))
    figures: dict[str, dict[str, float]] = {}
    for method in SCALE_OUT_METHODS:
        model = common.build_model(scale.filters, not common.is_plain(method))
        learner = distributed.wrap(common.build_learner(method, model, scale.steps))
        learner.meta_step(tasks)  # warm-up at the meta-batch's shapes
        distributed.barrier()
        distributed.reset_communication(sync_cuda=True)
        common.sync()
        start = time.perf_counter()
        for _ in range(iterations):
            learner.meta_step(tasks)
        common.sync()
        figures[method] = {"seconds": time.perf_counter() - start,
                           "communication_seconds": distributed.communication()["seconds"]}
    gathered = distributed.all_gather(figures)
    if distributed.is_main():
        Path(out).write_text(json.dumps(gathered))
    distributed.shutdown()


def _launch(scale: Scale, world: int, iterations: int) -> list[dict[str, dict[str, float]]]:
    """Run :func:`_rank` on ``world`` spawned processes; returns each rank's figures."""
    import torch.multiprocessing as mp

    threads = scale.threads or max(1, (os.cpu_count() or 1) // world)
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
                  "TORCHELASTIC_USE_AGENT_STORE": "True"}
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "ranks.json")
        context = mp.start_processes(_rank, args=(world, rendezvous, scale, iterations,
                                                  threads, out),
                                     nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + _TIMEOUT_S
        while not context.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"figure 11: {world} process(es) did not finish within "
                                   f"{_TIMEOUT_S} s")
        del store
        return json.loads(Path(out).read_text())


def figure(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Method -> world size (a string) -> ``meta_iterations_per_second``,
    ``seconds_per_iteration`` (the slowest rank's), ``communication_seconds_per_iteration``
    (the mean over ranks), ``communication_fraction``, ``world_size``; and
    ``speedup_over_1`` for each world size above 1."""
    del meta
    iterations = 3 if scale.name == "full" else 2
    by_world = {}
    for world in world_sizes(scale.device):
        log(f"scale-out: {world} process(es), {iterations} meta-iterations per method ...")
        by_world[world] = _launch(scale, world, iterations)
    results: dict[str, Any] = {}
    for method in SCALE_OUT_METHODS:
        results[method] = {}
        for world, ranks in by_world.items():
            seconds = max(r[method]["seconds"] for r in ranks) / iterations
            communication = sum(r[method]["communication_seconds"] for r in ranks) / (
                len(ranks) * iterations)
            entry = {"world_size": world, "seconds_per_iteration": seconds,
                     "meta_iterations_per_second": 1.0 / seconds,
                     "communication_seconds_per_iteration": communication,
                     "communication_fraction": communication / seconds}
            if world > 1:
                entry["speedup_over_1"] = results[method]["1"]["seconds_per_iteration"] / seconds
            results[method][str(world)] = entry
            log(f"  {method}, {world} process(es): {1.0 / seconds:.3f} it/s, "
                f"{communication * 1e3:.1f} ms in collectives")
    return results
