"""Task-parallel meta-training on ``torch.distributed``, as ``torchrun`` launches it.

Each process (rank) adapts its share of the meta-batch, computes its local meta-gradients
and the ranks average them before identical meta-optimiser steps, so every rank holds the
same φ, θ_0 and learned inner rates throughout. ``torchrun --nproc_per_node=N -m warpgrad
train ...`` needs nothing else: the command joins the process group torchrun describes
(:func:`init_from_env`), and the training loop shards the meta-batch (:func:`shard`) and
makes its learner distributed (:func:`wrap`). ``docs/distributed.md`` gives the semantics of
each objective across ranks, the resume rules and the fault handling.

The core (models, engine, algorithms, tasks) never imports this module: :func:`wrap` makes a
:class:`~warpgrad.algorithms.MetaLearner` distributed from the outside, like
``nn.SyncBatchNorm.convert_sync_batchnorm``. At world size 1 every function here is the
identity (or a no-op), so a single process runs exactly the code and numbers it always ran.

Example (world size 1, outside torchrun: nothing changes):
    >>> import torch.nn.functional as F
    >>> from warpgrad import distributed, make_learner, mlp
    >>> learner = make_learner("leap", mlp(), F.mse_loss, steps=2)
    >>> distributed.init_from_env(), distributed.world_size(), distributed.is_main()
    (False, 1, True)
    >>> distributed.wrap(learner) is learner, distributed.shard([1, 2, 3])
    (True, [1, 2, 3])
"""

from __future__ import annotations

import datetime
import os
import time
import weakref
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from warpgrad.errors import CollectiveError, LaunchError

T = TypeVar("T")
R = TypeVar("R")

TIMEOUT_ENV = "WARPGRAD_DIST_TIMEOUT"
"""Environment variable: seconds a collective waits for the other ranks before failing."""

DEFAULT_TIMEOUT_S = 300.0
"""The default of :data:`TIMEOUT_ENV`. A rank that dies closes its connections and the
others fail at once; the timeout bounds only a rank that hangs or stalls. It must exceed the
longest stretch one rank works alone between collectives: rank 0 writing a checkpoint and
plots, or a first meta-iteration's warm-up."""

_RANK_SEED_STRIDE = 1_000_003
"""Rank r's learner generator is seeded ``seed + r * stride``: rank 0 keeps the seed."""


_WRAPPED: weakref.WeakSet = weakref.WeakSet()
_COMMUNICATION = {"seconds": 0.0, "calls": 0}
_SYNC_TIMING = False  # the benchmark sets it: synchronise CUDA around timed collectives


# -- the process group -----------------------------------------------------------------------

def timeout_seconds() -> float:
    """The collective timeout: ``$WARPGRAD_DIST_TIMEOUT`` seconds, else
    :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise LaunchError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def init_from_env(timeout_s: float | None = None) -> bool:
    """Join the process group that torchrun's environment describes (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): Gloo for CPU tensors, NCCL
    for CUDA tensors where CUDA is available (each process then uses GPU ``LOCAL_RANK``).

    A no-op without those variables or at world size 1. ``timeout_s``: how long a collective
    waits (default :func:`timeout_seconds`). Returns whether this process is one of several.
    """
    if dist.is_available() and dist.is_initialized():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise LaunchError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; "
                          "run one process")
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    seconds = timeout_seconds() if timeout_s is None else timeout_s
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    return True


def shutdown() -> None:
    """Leave the process group once every rank is done; a no-op when not in one."""
    if _active():
        barrier()  # a rank that leaves while another still talks to it can abort that one
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """How many processes train together (1 outside a process group)."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and prints."""
    return rank() == 0


# -- collectives (each failure becomes one CollectiveError) ----------------------------------

def _collective(name: str, call: Callable[[], R]) -> R:
    if _SYNC_TIMING and torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        result = call()
        if _SYNC_TIMING and torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception as error:  # Gloo raises RuntimeError, NCCL DistBackendError
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CollectiveError(
            f"rank {rank()} of {world_size()}: {name} failed: another process stopped or did "
            f"not answer within {timeout_seconds():g} s ({TIMEOUT_ENV}); resume from the last "
            f"checkpoint with --resume RUN_DIR ({first[:200]})") from error
    _COMMUNICATION["seconds"] += time.perf_counter() - start
    _COMMUNICATION["calls"] += 1
    return result


def communication() -> dict[str, float]:
    """Seconds spent in this module's collectives and how many ran, since the last
    :func:`reset_communication` (the benchmark's communication time)."""
    return dict(_COMMUNICATION)


def reset_communication(sync_cuda: bool = False) -> None:
    """Zero :func:`communication`'s counters. ``sync_cuda``: from now on synchronise CUDA
    around each collective, so that its time includes its kernels (costs overlap)."""
    global _SYNC_TIMING
    _SYNC_TIMING = sync_cuda
    _COMMUNICATION.update(seconds=0.0, calls=0)


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if world_size() > 1:
        _collective("barrier", dist.barrier)


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order."""
    if world_size() == 1:
        return [value]
    out: list[Any] = [None] * world_size()
    _collective("all_gather_object", lambda: dist.all_gather_object(out, value))
    return out


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (others pass anything, e.g. ``None``). Across
    processes its tensors arrive on the CPU: rank 0's GPU is not the others'."""
    if world_size() == 1:
        return value
    box = [_on_cpu(value) if is_main() else None]
    _collective("broadcast_object_list", lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in its dicts, lists and tuples moved to the CPU."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


@torch.no_grad()
def average_gradients(params: Sequence[Tensor]) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks, in place: one flat
    all-reduce per (device, dtype). A rank without a gradient for a parameter counts as a
    zero gradient; a parameter no rank has a gradient for keeps ``grad = None``."""
    n = world_size()
    if n == 1:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    for group in groups.values():
        present = torch.tensor([p.grad is not None for p in group], dtype=group[0].dtype,
                               device=group[0].device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in group] + [present])
        _collective("all_reduce", lambda flat=flat: dist.all_reduce(flat))
        counts = flat[-len(group):].tolist()
        for p, chunk, count in zip(group, flat[:-len(group)].split([q.numel() for q in group]),
                                   counts):
            p.grad = None if count == 0 else (chunk / n).view_as(p)


# -- a distributed learner -------------------------------------------------------------------

def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of a meta-batch: ``items[rank::world]``. No item goes to two ranks
    and the shares' union is ``items``. Raises :class:`LaunchError` unless ``world``
    divides ``len(items)``: equal shares make the average of the ranks' means the mean over
    the meta-batch, and give every rank the same number of offline updates."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if len(items) % w:
        raise LaunchError(f"the meta-batch (meta_batch={len(items)} tasks) must be a multiple "
                          f"of the number of processes ({w})")
    return list(items[r::w])


def wrap(learner: Any) -> Any:
    """Make ``learner`` (a :class:`~warpgrad.algorithms.MetaLearner`) train with the other
    ranks, in place; returns it. A no-op at world size 1 and on a learner already wrapped.

    - each meta-optimiser's ``step()`` (φ and learned rates in ``warp_optimizer``, θ_0 in
      ``init_optimizer``) first averages its parameters' gradients over ranks; WarpGrad's
      offline updates then average one mini-batch gradient per rank, in lockstep;
    - ``meta_step``'s statistics are averaged over ranks (every rank sees the meta-batch's);
    - the learner's generator (batch draws, point sampling, buffer shuffles) is seeded per
      rank, ``seed + rank * 1000003``; rank 0 keeps the single-process seed.

    Every rank must call ``meta_step`` with its share of the meta-batch (:func:`shard`).
    """
    if world_size() == 1 or learner in _WRAPPED:
        return learner
    for opt in (learner.warp_optimizer, learner.init_optimizer):
        if opt is not None:
            opt.step = _averaging_step(opt, opt.step)
    learner.meta_step = _averaging_meta_step(learner.meta_step)
    learner.generator.manual_seed(learner.generator.initial_seed() + rank() * _RANK_SEED_STRIDE)
    _WRAPPED.add(learner)
    return learner


def _averaging_step(optimizer: torch.optim.Optimizer, step: Callable) -> Callable:
    @wraps(step)
    def averaged(*args, **kwargs):
        average_gradients([p for g in optimizer.param_groups for p in g["params"]])
        return step(*args, **kwargs)

    return averaged


def _averaging_meta_step(meta_step: Callable) -> Callable:
    @wraps(meta_step)
    def averaged(tasks):
        stats = meta_step(tasks)
        gathered = all_gather(stats)
        keys = sorted({k for s in gathered for k in s})
        return {k: sum(s[k] for s in gathered if k in s) / sum(k in s for s in gathered)
                for k in keys}

    return averaged


# -- checkpoints --------------------------------------------------------------------------------

def checkpoint_state(learner: Any) -> dict[str, Any]:
    """What a checkpoint needs beyond ``learner.state_dict()`` (rank 0's) so that every rank
    resumes where it stopped: every rank's generator state (a collective: call it on all
    ranks). Empty at world size 1, so single-process checkpoints are unchanged."""
    if world_size() == 1:
        return {}
    return {"world_size": world_size(),
            "rank_generators": all_gather(learner.generator.get_state())}


def restore(learner: Any, state: dict[str, Any], iteration: int) -> None:
    """After ``learner.load_state_dict(state["learner"])``: this rank's generator.

    Same world size as the checkpoint's: each rank continues its own stream, so the resumed
    run is the uninterrupted one. Another world size: rank 0 continues the checkpoint's
    stream and rank r > 0 starts a fresh one from (seed, r, ``iteration``); the meta-batch,
    its tasks and the meaning of every update are the same, the batch draws of ranks > 0 are
    not. Raises :class:`LaunchError` for offline WarpGrad, whose updates depend on the
    world size (each averages one mini-batch per rank)."""
    saved = state.get("world_size", 1)
    if saved == world_size():
        if saved > 1:
            learner.generator.set_state(state["rank_generators"][rank()])
        return
    warp = getattr(learner, "warp", None)
    if warp is not None and warp.regime == "offline":
        raise LaunchError(
            f"the checkpoint was written by {saved} process(es), this run has {world_size()}: "
            "offline WarpGrad's φ updates average one mini-batch per process, so their number "
            f"and size change with it; resume with {saved} process(es) "
            f"(torchrun --nproc_per_node={saved})")
    if rank() > 0:
        learner.generator.manual_seed(learner.generator.initial_seed()
                                      + rank() * _RANK_SEED_STRIDE + iteration)


def split_map(fn: Callable[[int, T], R], items: Sequence[T]) -> list[R]:
    """``[fn(i, item) for i, item in enumerate(items)]`` with item i computed on rank
    ``i % world`` and the results gathered, in order, on every rank."""
    n = world_size()
    mine = [(i, fn(i, item)) for i, item in enumerate(items) if i % n == rank()]
    results: dict[int, R] = {}
    for part in all_gather(mine):
        results.update(part)
    return [results[i] for i in range(len(items))]
