"""The benchmark suite (issue 7): what one meta-iteration costs, in seconds and memory.

Run it as ``warpgrad bench [--scale full|small] [--out DIR]`` or
``python benchmarks/run.py ...``. It prints a markdown table and writes ``bench.json`` and
``bench.md``. Figures:

1. ``meta_iteration``: one meta-iteration of the multi-shot protocol (Conv4 with linear 3x3
   conv warps, 20-way glyph alphabet tasks, K SGD steps at lr 0.1, offline WarpGrad over every
   buffer point one at a time) for warp-leap (exact, first-order), leap, reptile and fomaml:
   seconds and peak memory. At ``--scale full`` only ``measured_tasks`` tasks of the meta-batch
   of 20 are run and the figures are extrapolated (stated in the output).
2. ``overhead``: that meta-iteration's wall time over the time of the bare compute it needs
   (the same forward/backward passes written as a hand-rolled loop over plain tensors).
3. ``memory_vs_steps``: peak memory of one meta-iteration as the adaptation length K grows,
   for WarpGrad online and offline (at the protocol's shapes) and second-order MAML (at small
   shapes: at the protocol's it needs several GB per task).
4. ``warped_step``: one warped adaptation step versus one plain step (ms, ratio).
5. ``batched_objective``: the meta-objective per buffer point, batched with vmap versus one
   point at a time (ms per point, ratio).
6. ``switches``: the Warp-Leap meta-iteration as the speed switches are turned on one by one
   (default malloc and NCHW, tuned malloc, torch.compile, bf16, channels-last), with each
   rung's speed-up.
7. ``online``: Warp-Leap with the online objective, a fresh step per point versus the
   adaptation's own step (``WarpGrad(share_step=True)``, the paper's Algorithm 1).
8. ``training`` (only when named): real meta-iterations over the whole meta-batch, tasks
   one by one or in parallel.
9. ``host_ops``: the operators dispatched from the host per adaptation step or buffer point.
10. ``convolutions``: the convolutions of the Warp-Leap meta-iteration (exact and
    first-order) alone, every call replayed on its own (:mod:`warpgrad._conv_calls`):
    seconds, GFLOP, GFLOP/s, and the meta-iteration's time over theirs. On a machine where
    convolutions dominate, the floor under any time target.

Every measured case runs in a fresh process (a forkserver child), so neither its time nor its
peak memory is contaminated by another case. Memory is the process's peak resident set size
(``ru_maxrss``) and its growth over the resident size after setup, in MB (10^6 bytes); on a
GPU (``device="cuda"``) also the peak of ``torch.cuda.max_memory_allocated``, and every
timing synchronises the device first.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

MB = 1e6
N_WAY = 20
INNER_LR = 0.1
META_METHODS = ("warp-leap-exact", "warp-leap-first-order", "leap", "reptile", "fomaml")


@dataclass(frozen=True)
class Scale:
    """The shapes of one benchmark run.

    ``meta_batch``: the protocol's meta-batch; ``measured_tasks``: how many of its tasks are
    actually run (figures are scaled by ``meta_batch / measured_tasks`` when fewer);
    ``steps``: K; ``batch_size``, ``filters``: batch and Conv4 width; ``step_reps``: steps
    timed per case of figure 4; ``points``: buffer points of figure 5; ``k_values``,
    ``k_filters``, ``k_batch``: adaptation lengths and shapes of figure 3 (meta-batch 1).
    The switches every case uses: ``threads``, ``channels_last``, ``precision`` (``fp32`` or
    ``bf16``), ``buffer`` (the offline replay buffer: ``memory``, ``float16`` or ``disk``),
    ``tune_malloc`` (:func:`warpgrad.tune_allocator`), ``compile`` (``torch.compile`` of
    the model's forward, :class:`~warpgrad.models.warped.WarpedModel`), ``cuda_graphs``,
    ``cudnn_benchmark`` (``torch.backends.cudnn.benchmark``: cuDNN times its convolution
    algorithms at each new shape and keeps the fastest; a GPU switch) and ``device``
    (``cpu`` or ``cuda``: where models, data and buffers live).
    """

    name: str
    meta_batch: int
    measured_tasks: int
    steps: int
    batch_size: int
    filters: int
    step_reps: int
    points: int
    k_values: tuple[int, ...]
    k_filters: int
    k_batch: int
    threads: int | None = None
    channels_last: bool = False
    precision: str = "fp32"
    buffer: str = "memory"
    tune_malloc: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    cudnn_benchmark: bool = False
    device: str = "cpu"

    @property
    def extrapolated(self) -> bool:
        return self.measured_tasks < self.meta_batch


SCALES: dict[str, Scale] = {
    "full": Scale("full", meta_batch=20, measured_tasks=1, steps=100, batch_size=128,
                  filters=64, step_reps=20, points=4, k_values=(5, 25, 100), k_filters=32,
                  k_batch=32),
    "small": Scale("small", meta_batch=2, measured_tasks=2, steps=10, batch_size=32,
                   filters=16, step_reps=5, points=4, k_values=(2, 5, 10), k_filters=8,
                   k_batch=16),
}
"""``full`` is the original's multi-shot protocol; ``small`` runs in seconds."""


# -- measurement helpers (run inside the case's process) --------------------------------------
def _rss_bytes() -> int:
    """The current resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _on_gpu() -> bool:
    return _SWITCHES["device"].startswith("cuda")


def _sync() -> None:
    """Wait for the device's queued work, so that a wall-clock reading includes it."""
    if _on_gpu():
        torch.cuda.synchronize()


def _measure(fn: Callable[[], Any]) -> dict[str, float]:
    """Run ``fn`` once: ``seconds`` (wall), ``peak_rss_mb`` (the process's peak RSS) and
    ``peak_growth_mb`` (that peak minus the RSS just before ``fn``); on a GPU also
    ``peak_device_mb`` (``torch.cuda.max_memory_allocated`` during ``fn``)."""
    gc.collect()
    gpu = _on_gpu()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_bytes()
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    seconds = time.perf_counter() - start
    peak = _peak_bytes()
    result = {"seconds": seconds, "peak_rss_mb": peak / MB,
              "peak_growth_mb": max(peak - base, 0) / MB}
    if gpu:
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / MB
    return result


_GLYPHS: list = []


def _glyphs():
    """The glyph dataset, loaded once per process (the forkserver loads it before forking the
    cases, see :func:`run_case`)."""
    from warpgrad.data import load_glyphs

    if not _GLYPHS:
        _GLYPHS.append(load_glyphs())
    return _GLYPHS[0]


if os.environ.get("WARPGRAD_BENCH_FORKSERVER") == "1":  # imported as the forkserver's preload
    _glyphs()


def _tasks(scale: Scale, batch_size: int, n: int) -> list:
    from warpgrad.data import AlphabetTasks

    tasks = AlphabetTasks(_glyphs(), batch_size=batch_size, n_train_tasks=n,
                          device=_SWITCHES["device"]).train
    return [tasks[i % len(tasks)] for i in range(n)]


_SWITCH_NAMES = ("channels_last", "precision", "buffer", "compile", "cuda_graphs",
                 "device")
_SWITCHES: dict[str, Any] = {f.name: f.default for f in fields(Scale) if f.name in _SWITCH_NAMES}
"""The running case's :class:`Scale` switches (``_child`` sets them in the case's process;
until then :class:`Scale`'s defaults)."""


def _model(filters: int, warped: bool = True):
    from warpgrad.models.backbones import conv4

    torch.manual_seed(0)
    return conv4(N_WAY, filters=filters, warp="conv3x3" if warped else None,
                 channels_last=_SWITCHES["channels_last"],
                 precision=_SWITCHES["precision"], compile=_SWITCHES["compile"],
                 cuda_graphs=_SWITCHES["cuda_graphs"]).to(_SWITCHES["device"])


def _learner(method: str, model, steps: int, regime: str = "offline", *,
             points_per_update: int = 1, parallel_tasks: bool = False):
    from warpgrad.algorithms.methods import make_learner
    from warpgrad.algorithms.warpgrad import WarpGrad

    if method.startswith("warp-leap-"):
        # "warp-leap-VARIANT", or "warp-leap-VARIANT@online[-shared]" (figure 7)
        variant, _, mode = method.removeprefix("warp-leap-").partition("@")
        regime = "online" if mode.startswith("online") else regime
        buffer = _SWITCHES["buffer"]
        warp = WarpGrad(variant, regime, points_per_update=points_per_update,
                        batched=points_per_update > 1, buffer_on_disk=buffer == "disk",
                        buffer_dtype=torch.float16 if buffer == "float16" else None,
                        share_step=mode == "online-shared")
        return make_learner("warp-leap", model, F.cross_entropy, steps=steps, inner_lr=INNER_LR,
                            warp=warp, parallel_tasks=parallel_tasks)
    return make_learner(method, model, F.cross_entropy, steps=steps, inner_lr=INNER_LR,
                        parallel_tasks=parallel_tasks)


def _warm_up(method: str, filters: int, tasks: list) -> None:
    """One 1-step meta-iteration on one task: loads kernels and allocators before timing."""
    _learner(method, _model(filters, not _plain(method)), 1).meta_step(tasks[:1])


def _plain(method: str) -> bool:
    return not method.startswith("warp") and method != "maml-warped"


# -- the cases ---------------------------------------------------------------------------------
def case_meta_iteration(scale: Scale, method: str) -> dict[str, float]:
    """Figure 1: one meta-iteration over ``scale.measured_tasks`` tasks (seconds, MB)."""
    tasks = _tasks(scale, scale.batch_size, scale.measured_tasks)
    _warm_up(method, scale.filters, tasks)
    learner = _learner(method, _model(scale.filters, not _plain(method)), scale.steps)
    result = _measure(lambda: learner.meta_step(tasks))
    result["num_params"] = learner.model.task_spec.numel
    return result


def case_memory_vs_steps(scale: Scale, method: str, steps: int) -> dict[str, float]:
    """Figure 3: one meta-iteration of one task with K = ``steps``. ``method``:
    ``warpgrad-online`` or ``warpgrad-offline`` (warp-leap exact) at the protocol's shapes
    ``filters``/``batch_size`` (so that activations, not allocator noise, make the peak),
    ``maml`` (second order, plain Conv4) at the small shapes ``k_filters``/``k_batch``."""
    if method == "maml":
        name, regime = "maml", "offline"
        filters, batch = scale.k_filters, scale.k_batch
    else:
        name, regime = "warp-leap-exact", method.removeprefix("warpgrad-")
        filters, batch = scale.filters, scale.batch_size
    tasks = _tasks(scale, batch, 1)
    # warmed up at batch 2: loads the kernels without leaving batch-sized activations
    # resident, which would hide the measured call's own peak (a growth of 0 MB at small K)
    _learner(name, _model(filters, name != "maml"), 1, regime).meta_step(_tasks(scale, 2, 1))
    learner = _learner(name, _model(filters, name != "maml"), steps, regime)
    result = _measure(lambda: learner.meta_step(tasks))
    # the other measures run after it, so that their allocations are not part of the
    # resident set it starts from
    if name == "maml":
        result["saved_tensor_mb"] = _saved_tensor_bytes(learner, tasks[0]) / MB
    if not _on_gpu():  # there the device's allocator counts already (peak_device_mb)
        # the same meta-iteration again, from a fresh model, under the profiler
        again = _learner(name, _model(filters, name != "maml"), steps, regime)
        result["live_peak_mb"] = live_tensor_peak_bytes(lambda: again.meta_step(tasks)) / MB
    return result


def live_tensor_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak growth of the bytes held by CPU tensors while ``fn()`` runs, from the profiler's
    record of every allocation and free: what tensors hold, not what the C library keeps
    resident (peak RSS, which heap fragmentation moves by tens of MB between runs)."""
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


def _saved_tensor_bytes(learner, task) -> int:
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


def case_warped_step(scale: Scale) -> dict[str, float]:
    """Figure 4: ms per adaptation step (data draw, forward, backward, SGD step) of Conv4 with
    and without warps, batch ``batch_size``; the two alternate to share any drift."""
    from warpgrad.engine.adapt import adapt
    from warpgrad.engine.inner_sgd import InnerSGD

    task = _tasks(scale, scale.batch_size, 1)[0]
    models = {"warped": _model(scale.filters, True), "plain": _model(scale.filters, False)}
    times: dict[str, float] = {"warped": 0.0, "plain": 0.0}
    for rep in range(3):  # rep 0 warms up
        for name, model in models.items():
            opt = InnerSGD(model.task_spec, INNER_LR).to(_SWITCHES["device"])
            phi = {n: p.detach() for n, p in model.warp_parameters().items()}
            _sync()
            start = time.perf_counter()
            adapt(model, model.init_theta(), task, F.cross_entropy, opt,
                  1 if rep == 0 else scale.step_reps, phi=phi,
                  generator=torch.Generator().manual_seed(rep))
            _sync()
            if rep:
                times[name] += time.perf_counter() - start
    n = 2 * scale.step_reps
    return {"warped_ms": 1e3 * times["warped"] / n, "plain_ms": 1e3 * times["plain"] / n}


def case_batched_objective(scale: Scale, variant: str) -> dict[str, float]:
    """Figure 5: ms per buffer point of the offline WarpGrad update, ``points`` points in one
    vmap call versus one point per update."""
    from warpgrad._optim import SGD
    from warpgrad.algorithms.warpgrad import WarpGrad
    from warpgrad.engine.adapt import adapt
    from warpgrad.engine.buffer import ReplayBuffer
    from warpgrad.engine.inner_sgd import InnerSGD

    task = _tasks(scale, scale.batch_size, 1)[0]
    model = _model(scale.filters, True)
    opt = InnerSGD(model.task_spec, INNER_LR).to(_SWITCHES["device"])
    n = scale.points
    buffer = ReplayBuffer(n, model.task_spec.numel, device=_SWITCHES["device"])
    adapt(model, model.init_theta(), task, F.cross_entropy, opt, n - 1,
          observers=[buffer.recorder(0)], generator=torch.Generator().manual_seed(0))
    objectives = {"sequential": WarpGrad(variant, "offline", points_per_update=1),
                  "batched": WarpGrad(variant, "offline", points_per_update=n, batched=True)}
    times = {"sequential": 0.0, "batched": 0.0}
    for rep in range(2):  # rep 0 warms up
        for name, objective in objectives.items():
            meta = SGD(model.warp_parameters().values(), lr=0.0)
            _sync()
            start = time.perf_counter()
            objective.offline_update(model, F.cross_entropy, opt, buffer, [task], meta,
                                     torch.Generator().manual_seed(rep))
            _sync()
            if rep:
                times[name] = time.perf_counter() - start
    return {"sequential_ms_per_point": 1e3 * times["sequential"] / n,
            "batched_ms_per_point": 1e3 * times["batched"] / n}


TRAINING_MODES: dict[str, dict[str, bool]] = {
    "tasks one by one": {"parallel_tasks": False, "batched_points": False},
    "tasks in parallel": {"parallel_tasks": True, "batched_points": False},
    "tasks in parallel, points batched": {"parallel_tasks": True, "batched_points": True},
}
"""Figure 8's ways of running a meta-iteration. The first two give the same φ and θ_0 (the
original semantics, one φ update per point; ``parallel_tasks`` only vmaps the adaptation);
"points batched" updates φ once per ``meta_batch`` points, evaluated in one vmap call."""


HOST_OPS_MODES: dict[str, dict[str, bool]] = {
    "eager, batches one at a time": {"cuda_graphs": False, "draw_ahead": False},
    "CUDA graphs, batches one at a time": {"cuda_graphs": True, "draw_ahead": False},
    "CUDA graphs, batches drawn ahead (default)": {"cuda_graphs": True, "draw_ahead": True},
}
"""Figure 9's ways of running a first-order Warp-Leap meta-iteration (the same result)."""

HOST_OPS_FILTERS = 4
"""Figure 9's Conv4 width: operator counts do not depend on it, and a narrow net is quick."""


def case_host_ops(scale: Scale, mode: str) -> dict[str, float]:
    """Figure 9: the operators PyTorch dispatches from the host in one first-order
    Warp-Leap meta-iteration over the whole meta-batch, outside the passes a GPU
    replays from CUDA graphs (on a CPU, graphed passes run eagerly and are not counted):
    on a GPU each is a kernel launch or host-side work the device waits on, where eager
    PyTorch is bound by the host. ``per_step_or_point``: per adaptation step or buffer
    point (a task has K of one and K + 1 of the other); ``scalar_reads``: values read back
    to Python (``.item()``, ``int()``, an ``if`` on a tensor), each a host-device
    synchronisation when the tensor is on a GPU. At the scale's batch and K,
    Conv4-:data:`HOST_OPS_FILTERS`; the second of two meta-iterations (the first captures
    the graphs)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from warpgrad.engine.graphs import rehearsing

    class HostOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = self.reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not rehearsing():
                self.ops += 1
                self.reads += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    options = HOST_OPS_MODES[mode]
    _SWITCHES["cuda_graphs"] = options["cuda_graphs"]
    tasks = _tasks(scale, scale.batch_size, scale.meta_batch)
    for task in tasks:
        task.prefetch_mb = None if options["draw_ahead"] else 0
    learner = _learner("warp-leap-first-order", _model(HOST_OPS_FILTERS), scale.steps)
    learner.meta_step(tasks)
    with HostOps() as counted:
        learner.meta_step(tasks)
    units = scale.meta_batch * (2 * scale.steps + 1)  # K steps and K + 1 points per task
    return {"ops": counted.ops, "per_step_or_point": counted.ops / units,
            "scalar_reads": counted.reads}


def convolution_calls(scale: Scale, method: str, steps: int) -> Counter:
    """The convolution calls (:mod:`warpgrad._conv_calls`) of one task's meta-iteration of
    ``method`` with K = ``steps``, run eagerly (a compiled graph or a CUDA graph replay hides
    its calls): the same convolutions, layouts and dtypes as the scale's switches give."""
    from warpgrad._conv_calls import record_convolutions

    saved = dict(_SWITCHES)
    _SWITCHES.update(compile=False, cuda_graphs=False)
    try:
        tasks = _tasks(scale, scale.batch_size, 1)
        learner = _learner(method, _model(scale.filters, not _plain(method)), steps)
        return record_convolutions(lambda: learner.meta_step(tasks))
    finally:
        _SWITCHES.update(saved)


def case_convolutions(scale: Scale, method: str) -> dict[str, float]:
    """Figure 10: the meta-iteration's convolutions alone, replayed call by call
    (:func:`warpgrad._conv_calls.replay`), for the whole meta-batch. Every adaptation step
    adds one step and one buffer point of the same shapes, so the calls of K steps are
    those of K = 1 plus K - 1 times what K = 2 adds (recorded at K = 1 and 2), and every
    task of the meta-batch makes the same calls as the first."""
    from warpgrad._conv_calls import replay

    one, two = (convolution_calls(scale, method, k) for k in (1, 2))
    calls = Counter()
    for call in one.keys() | two.keys():
        count = one[call] + (scale.steps - 1) * (two[call] - one[call])
        if count < 0:
            raise RuntimeError(f"{method}: a convolution call is made fewer times at K = 2 "
                               "than at K = 1; the calls are not linear in K")
        calls[call] = count * scale.meta_batch
    r = replay(+calls, _SWITCHES["device"])
    return {"seconds": r.seconds, "gflop": r.flops / 1e9,
            "gflop_per_s": r.flops / 1e9 / r.seconds if r.seconds else 0.0,
            "calls": r.calls, "distinct": r.distinct}


def case_training(scale: Scale, variant: str, mode: str) -> dict[str, float]:
    """Figure 8: one real Warp-Leap meta-iteration over the whole meta-batch (nothing
    extrapolated) in one of :data:`TRAINING_MODES` (seconds, MB)."""
    options = TRAINING_MODES[mode]
    tasks = _tasks(scale, scale.batch_size, scale.meta_batch)
    per_update = scale.meta_batch if options["batched_points"] else 1

    def learner(steps: int):
        return _learner(f"warp-leap-{variant}", _model(scale.filters), steps,
                        points_per_update=per_update, parallel_tasks=options["parallel_tasks"])

    learner(1).meta_step(tasks)  # warm-up at the meta-batch's shapes (vmap, kernels, compile)
    timed = learner(scale.steps)
    return _measure(lambda: timed.meta_step(tasks))


# -- the bare compute of a Warp-Leap meta-iteration, with no library machinery -----------------
def _bare_params(filters: int, warped: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Conv4's parameters as plain tensors on the case's device: θ (conv, BN, head) and the
    warps' φ (identity-initialised 3x3 convs)."""
    g = torch.Generator().manual_seed(0)
    theta: list[Tensor] = []
    warps: list[Tensor] = []
    channels = 1
    for _ in range(4):
        theta += [torch.randn(filters, channels, 3, 3, generator=g) * 0.1,
                  torch.zeros(filters), torch.ones(filters), torch.zeros(filters)]
        if warped:
            eye = torch.zeros(filters, filters, 3, 3)
            eye[torch.arange(filters), torch.arange(filters), 1, 1] = 1.0
            warps += [eye, torch.zeros(filters)]
        channels = filters
    theta += [torch.randn(N_WAY, filters, generator=g) * 0.1, torch.zeros(N_WAY)]
    device = _SWITCHES["device"]
    return [t.to(device) for t in theta], [w.to(device) for w in warps]


def _bare_forward(theta: list[Tensor], warps: list[Tensor], x: Tensor,
                  full_precision: bool = False) -> Tensor:
    """Conv4 on plain tensors, with the case's layout and precision switches (and, as the
    library's layers do on a CPU, channels-last throughout, with batch norm's statistics
    summed as :mod:`warpgrad.models._norm` does for accuracy, convolutions whose second
    derivative computes only the terms needed, :mod:`warpgrad.models._conv`, and max-pooling
    that saves only its argmax where it is differentiated twice, :mod:`warpgrad.models._pool`).
    ``full_precision``: float32 even under bf16, as the library's WarpGrad step runs."""
    from warpgrad.models._conv import conv2d
    from warpgrad.models._conv_block import channels_last_applies
    from warpgrad.models._norm import channels_last_batch_norm, is_nhwc
    from warpgrad.models._pool import max_pool2d
    from warpgrad.models._second_order import meta_backward_in_bf16
    from warpgrad.models.warped import to_channels_last

    h = x
    bf16 = _SWITCHES["precision"] == "bf16"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16 and not full_precision
                        ), meta_backward_in_bf16() if bf16 and full_precision else nullcontext():
        for i in range(4):
            w, b, gamma, beta = theta[4 * i: 4 * i + 4]
            if _SWITCHES["channels_last"] or channels_last_applies(h):
                h = to_channels_last(h)
            h = max_pool2d(conv2d(h, w, b, padding=(1, 1)), 2)
            h = (channels_last_batch_norm(h, gamma, beta, 1e-5) if is_nhwc(h) else
                 F.batch_norm(h, None, None, gamma, beta, training=True))
            h = F.relu(h)
            if warps:
                h = conv2d(h, warps[2 * i], warps[2 * i + 1], padding=(1, 1))
        out = F.linear(h.flatten(1), theta[16], theta[17])
    return out.float()


def bare_meta_iteration(tasks: int, steps: int, batch_size: int, filters: int,
                        variant: str, batch: tuple[Tensor, Tensor] | None = None) -> None:
    """The forward/backward passes one Warp-Leap meta-iteration needs, on plain tensors:
    per task ``steps`` SGD steps (forward+backward, update), then for each of the
    ``tasks * (steps + 1)`` buffer points the inner forward+backward (``create_graph`` for
    ``exact``), the step, the outer forward+backward into φ and φ's SGD update. Every pass
    uses the one ``batch`` (default: uniform noise of ``batch_size`` 28x28 images)."""
    from warpgrad.models._second_order import second_order

    theta0, warps = _bare_params(filters, True)
    # compiled like the library's model: every pass but the exact inner one, whose gradient
    # is differentiated again (compiled graphs cannot be)
    forward = torch.compile(_bare_forward) if _SWITCHES["compile"] else _bare_forward
    g = torch.Generator().manual_seed(0)
    if batch is None:
        batch = (torch.rand(batch_size, 1, 28, 28, generator=g),
                 torch.randint(N_WAY, (batch_size,), generator=g))
    x, y = (t.to(theta0[0].device) for t in batch)
    points = []
    for _ in range(tasks):
        theta = [t.clone() for t in theta0]
        points.append(theta)
        for _ in range(steps):
            theta = [t.detach().requires_grad_() for t in theta]
            loss = F.cross_entropy(forward(theta, warps, x), y)
            grads = torch.autograd.grad(loss, theta)
            with torch.no_grad():
                theta = [t - INNER_LR * d for t, d in zip(theta, grads)]
            points.append(theta)
    phi = [w.clone().requires_grad_() for w in warps]
    exact = variant == "exact"
    for point in points:
        theta = [t.detach().requires_grad_() for t in point]
        with second_order() if exact else nullcontext():
            inner = F.cross_entropy((_bare_forward if exact else forward)(
                theta, phi if exact else warps, x, True), y)
            grads = torch.autograd.grad(inner, theta, create_graph=exact)
        stepped = [t - INNER_LR * d for t, d in zip(theta, grads)]
        outer = F.cross_entropy(forward(stepped, phi, x), y)
        phi_grads = torch.autograd.grad(outer, phi)
        with torch.no_grad():
            for p, d in zip(phi, phi_grads):
                p.sub_(INNER_LR * d)


def case_bare(scale: Scale, variant: str) -> dict[str, float]:
    """Figure 2's denominator: :func:`bare_meta_iteration` at the measured shapes."""
    # a real glyph batch: some kernels' speed depends on the data (e.g. NCHW max-pooling)
    batch = _tasks(scale, scale.batch_size, 1)[0].train_batch(torch.Generator().manual_seed(0))
    bare_meta_iteration(1, 1, scale.batch_size, scale.filters, variant, batch)  # warm-up
    return _measure(lambda: bare_meta_iteration(scale.measured_tasks, scale.steps,
                                                scale.batch_size, scale.filters, variant, batch))


CASES: dict[str, Callable[..., dict[str, float]]] = {
    "meta_iteration": case_meta_iteration,
    "memory_vs_steps": case_memory_vs_steps,
    "warped_step": case_warped_step,
    "batched_objective": case_batched_objective,
    "bare": case_bare,
    "training": case_training,
    "host_ops": case_host_ops,
    "convolutions": case_convolutions,
}


def _child(kind: str, scale: Scale, args: tuple) -> dict[str, float]:
    from warpgrad._alloc import tune_allocator

    if scale.tune_malloc:
        tune_allocator()
    torch.backends.cudnn.benchmark = scale.cudnn_benchmark
    _SWITCHES.update({name: getattr(scale, name) for name in _SWITCH_NAMES})
    if scale.threads is not None:
        torch.set_num_threads(scale.threads)
    return CASES[kind](scale, *args)


def run_case(kind: str, scale: Scale, *args: Any) -> dict[str, float]:
    """Run one case in a fresh process (forkserver child) and return its figures."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    # the forkserver imports torch and this module (loading the glyphs) once; every case is a
    # fresh fork of it, so cases share no allocator state and start in milliseconds
    os.environ["WARPGRAD_BENCH_FORKSERVER"] = "1"
    ctx.set_forkserver_preload(["torch", "warpgrad.bench"])
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
        return pool.submit(_child, kind, scale, args).result()


# -- the suite ---------------------------------------------------------------------------------
def machine_info(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, torch version, the threads the cases use and, when the cases
    run on a GPU, its name."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": threads or torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


@dataclass
class Suite:
    """Which figures to run (all by default) and where progress goes."""

    sections: tuple[str, ...] = ("meta_iteration", "overhead", "memory_vs_steps", "warped_step",
                                 "batched_objective", "switches", "online", "host_ops",
                                 "convolutions")
    log: Callable[[str], None] = field(default=lambda s: None)


def run_suite(scale: Scale, suite: Suite | None = None) -> dict[str, Any]:
    """Run the benchmark suite at ``scale``; returns the JSON-ready results (seconds, ms, MB).
    """
    suite = suite or Suite()
    log = suite.log
    factor = scale.meta_batch / scale.measured_tasks
    results: dict[str, Any] = {"schema": 1, "scale": asdict(scale),
                               "machine": machine_info(scale.threads, scale.device)}
    wanted = set(suite.sections)
    meta: dict[str, Any] = {}
    if wanted & {"meta_iteration", "overhead"}:
        methods = META_METHODS if "meta_iteration" in wanted else META_METHODS[:2]
        for method in methods:
            log(f"meta-iteration {method} ...")
            r = run_case("meta_iteration", scale, method)
            entry = {"measured_tasks": scale.measured_tasks,
                     "measured_seconds": r["seconds"],
                     "measured_peak_rss_mb": r["peak_rss_mb"],
                     "measured_peak_growth_mb": r["peak_growth_mb"],
                     "seconds": r["seconds"] * factor, "extrapolated": scale.extrapolated}
            buffer_mb = 0.0
            if method.startswith("warp") and scale.extrapolated:
                # the offline buffer keeps (K + 1) parameter vectors per task, in memory
                points = (scale.meta_batch - scale.measured_tasks) * (scale.steps + 1)
                value_bytes = {"memory": 4, "float16": 2, "disk": 0}[scale.buffer]
                buffer_mb = points * r["num_params"] * value_bytes / MB
            if "peak_device_mb" in r:  # on a GPU the buffer lives in device memory
                entry["peak_rss_mb"] = r["peak_rss_mb"]
                entry["peak_growth_mb"] = r["peak_growth_mb"]
                entry["peak_device_mb"] = r["peak_device_mb"] + buffer_mb
            else:
                entry["peak_rss_mb"] = r["peak_rss_mb"] + buffer_mb
                entry["peak_growth_mb"] = r["peak_growth_mb"] + buffer_mb
            if scale.extrapolated:
                entry["how"] = (
                    f"ran {scale.measured_tasks} of {scale.meta_batch} tasks; seconds x "
                    f"{factor:g} (every cost is per task); peak memory = measured"
                    + (f" + {buffer_mb:.0f} MB for the other tasks' buffer points"
                       if buffer_mb else " (the buffer is on disk)" if method.startswith("warp")
                       else " (per-task memory is freed between tasks)"))
            meta[method] = entry
            log(f"  {entry['seconds']:.2f} s, peak {entry['peak_rss_mb']:.0f} MB")
        if "meta_iteration" in wanted:
            results["meta_iteration"] = meta
    if "overhead" in wanted:
        overhead = {}
        for variant in ("exact", "first-order"):
            log(f"bare compute {variant} ...")
            bare = run_case("bare", scale, variant)
            measured = meta[f"warp-leap-{variant}"]["measured_seconds"]
            overhead[variant] = {"meta_iteration_seconds": measured,
                                 "bare_seconds": bare["seconds"],
                                 "ratio": measured / bare["seconds"],
                                 "tasks": scale.measured_tasks}
            log(f"  ratio {overhead[variant]['ratio']:.3f}")
        results["overhead"] = overhead
    if "memory_vs_steps" in wanted:
        sweep: dict[str, dict[str, Any]] = {}
        for method in ("warpgrad-online", "warpgrad-offline", "maml"):
            sweep[method] = {}
            for k in scale.k_values:
                log(f"memory {method} K={k} ...")
                sweep[method][str(k)] = run_case("memory_vs_steps", scale, method, k)
        results["memory_vs_steps"] = {
            "filters": scale.k_filters, "batch_size": scale.k_batch, "meta_batch": 1,
            "note": f"one task; WarpGrad = warp-leap exact at Conv4-{scale.filters}, batch "
                    f"{scale.batch_size}; MAML second order on plain Conv4-{scale.k_filters}, "
                    f"batch {scale.k_batch}",
            "cases": sweep}
    if "warped_step" in wanted:
        log("warped vs plain step ...")
        r = run_case("warped_step", scale)
        r["ratio"] = r["warped_ms"] / r["plain_ms"]
        results["warped_step"] = r
    if "batched_objective" in wanted:
        batched = {}
        for variant in ("exact", "first-order"):
            log(f"batched objective {variant} ...")
            r = run_case("batched_objective", scale, variant)
            r["ratio"] = r["batched_ms_per_point"] / r["sequential_ms_per_point"]
            r["points"] = scale.points
            batched[variant] = r
        results["batched_objective"] = batched
    if "training" in wanted:
        training: dict[str, dict[str, Any]] = {}
        for variant in ("first-order", "exact"):
            training[variant] = {}
            for mode in TRAINING_MODES:
                log(f"whole meta-batch {variant}, {mode} ...")
                r = run_case("training", scale, variant, mode)
                training[variant][mode] = r
                log(f"  {r['seconds']:.2f} s")
        results["training"] = training
    if "host_ops" in wanted:
        host_ops = {}
        for mode in HOST_OPS_MODES:
            log(f"host operators, {mode} ...")
            host_ops[mode] = run_case("host_ops", scale, mode)
            log(f"  {host_ops[mode]['per_step_or_point']:.1f} per step or point")
        results["host_ops"] = host_ops
    if "convolutions" in wanted:
        floor = {}
        for method in META_METHODS[:2]:
            log(f"convolutions alone {method} ...")
            r = run_case("convolutions", scale, method)
            if method in meta:  # measured in this run: how far above its convolutions it is
                r["meta_iteration_seconds"] = meta[method]["seconds"]
                r["ratio"] = meta[method]["seconds"] / r["seconds"]
            floor[method] = r
            log(f"  {r['seconds']:.1f} s, {r['gflop']:.0f} GFLOP at {r['gflop_per_s']:.0f} "
                "GFLOP/s")
        results["convolutions"] = floor
    if "switches" in wanted:
        results["switches"] = _switches(scale, log)
    if "online" in wanted:
        results["online"] = _online(scale, log)
    results["targets"] = check_targets(results)
    return results


SWITCH_LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default malloc", {"channels_last": False, "tune_malloc": False}),
    ("+ tuned malloc (default)", {"channels_last": False, "tune_malloc": True}),
    ("+ bf16", {"channels_last": False, "tune_malloc": True, "precision": "bf16"}),
    ("+ compile", {"channels_last": False, "tune_malloc": True, "compile": True,
                   "precision": "bf16"}),
    ("+ channels-last", {"channels_last": True, "tune_malloc": True, "compile": True,
                         "precision": "bf16"}),
)
"""Figure 6: the speed switches, added one at a time (fp32 unless stated). bf16 comes before
compile: on a CPU the compiled forward gives up Conv4's channels-last blocks and is slower
than the eager one since 2026-11-27 (BENCHMARKS.md)."""


def _one_task(scale: Scale, method: str, log: Callable[[str], None]) -> dict[str, float]:
    """Figures 6 and 7: one task's meta-iteration of ``method`` at ``scale``, its seconds
    scaled to the meta-batch, and its peak RSS."""
    from dataclasses import replace

    r = run_case("meta_iteration", replace(scale, measured_tasks=1), method)
    log(f"  {r['seconds']:.2f} s per task")
    return {"task_seconds": r["seconds"], "seconds": r["seconds"] * scale.meta_batch,
            "peak_rss_mb": r["peak_rss_mb"]}


def _online(scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    """Figure 7: Warp-Leap with the online objective (Algorithm 1), a fresh step per point
    versus the adaptation's own step (``share_step``); one task, extrapolated."""
    out: dict[str, Any] = {}
    for variant in ("first-order", "exact"):
        entry: dict[str, Any] = {}
        for mode in ("online", "online-shared"):
            log(f"online {variant} {mode} ...")
            entry[mode] = _one_task(scale, f"warp-leap-{variant}@{mode}", log)
        entry["speedup"] = entry["online"]["task_seconds"] / entry["online-shared"]["task_seconds"]
        out[variant] = entry
    return out


def _switches(scale: Scale, log: Callable[[str], None]) -> dict[str, Any]:
    """Figure 6: the Warp-Leap meta-iteration (one task, extrapolated to the meta-batch) under
    each rung of :data:`SWITCH_LADDER`, and its speed-up over the first rung, same run."""
    from dataclasses import replace

    out: dict[str, Any] = {}
    for variant in ("first-order", "exact"):
        rungs: list[dict[str, Any]] = []
        for label, switches in SWITCH_LADDER:
            log(f"switches {variant}: {label} ...")
            rung = replace(scale, **{"precision": "fp32", "compile": False, **switches})
            r = _one_task(rung, f"warp-leap-{variant}", log)
            speedup = rungs[0]["task_seconds"] / r["task_seconds"] if rungs else 1.0
            rungs.append({"label": label, "switches": switches, **r, "speedup": speedup})
        out[variant] = rungs
    return out


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met. Speed
    targets hold for the full protocol only, so at other scales ``met`` is ``None``."""
    full = results["scale"]["name"] == "full"
    gpu = results["scale"].get("device", "cpu").startswith("cuda")
    targets = []

    def add(name: str, value: float | None, limit: str, met: bool | None) -> None:
        targets.append({"target": name, "value": value, "limit": limit, "met": met})

    overhead = results.get("overhead", {})
    for variant, r in overhead.items():
        add(f"overhead ratio ({variant})", r["ratio"], "<= 1.15", r["ratio"] <= 1.15)
    meta = results.get("meta_iteration", {})
    for method, limit in (("warp-leap-first-order", 370.0), ("warp-leap-exact", 500.0)):
        if method in meta and not gpu:  # the time targets are for the 2-core CPU
            s = meta[method]["seconds"]
            add(f"{method} meta-iteration seconds", s, f"<= {limit:g} s (original 742 s)",
                s <= limit if full else None)
        floor = results.get("convolutions", {}).get(method)
        if floor is not None and not gpu:  # can the target be met at all on this machine?
            s = floor["seconds"]
            add(f"{method} convolutions alone, seconds (a floor under the meta-iteration)", s,
                f"<= {limit:g} s, or the target is out of this machine's reach",
                s <= limit if full else None)
        if floor is not None and gpu:
            hours = floor["seconds"] * 1000 / 3600
            add(f"{method}: convolutions alone of 1,000 meta-iterations, hours (a floor)",
                hours, "<= 1 h, or the goal is out of this GPU's reach",
                hours <= 1 if full else None)
        if method in meta and gpu:
            hours = meta[method]["seconds"] * 1000 / 3600
            add(f"{method}: 1,000 meta-iterations, hours", hours, "<= 1 h on one GPU",
                hours <= 1 if full else None)
    for variant, modes in results.get("training", {}).items():
        for mode, r in modes.items():  # real meta-iterations: the goal's most direct measure
            hours = r["seconds"] * 1000 / 3600
            limit = "<= 1 h on one GPU" if gpu else "<= 1 h (a GPU goal)"
            add(f"warp-leap-{variant}, whole meta-batch, {mode}: 1,000 meta-iterations, hours",
                hours, limit, hours <= 1 if full and gpu else None)
    for method, r in meta.items():
        add(f"{method} peak memory MB", r["peak_rss_mb"], "< 1500 MB",
            r["peak_rss_mb"] < 1500 if full else None)
    for variant, rungs in ({} if gpu else results.get("switches", {})).items():
        limit = {"first-order": 370.0, "exact": 500.0}[variant]
        rung = min(rungs, key=lambda r: r["seconds"])  # the fastest, measured in this run
        switches = ", ".join(f"{k}={v}" for k, v in rung["switches"].items())
        add(f"warp-leap-{variant} meta-iteration seconds, fastest switches ({switches})",
            rung["seconds"], f"<= {limit:g} s", rung["seconds"] <= limit if full else None)
    sweep = results.get("memory_vs_steps", {}).get("cases", {})
    if sweep:
        ks = sorted(sweep["warpgrad-online"], key=int)
        lo, hi = ks[0], ks[-1]
        # on a GPU the activations live in device memory, not in the host's resident set
        key, what = (("peak_device_mb", "peak GPU memory") if gpu
                     else ("peak_growth_mb", "peak growth"))
        online = [sweep["warpgrad-online"][k][key] for k in (lo, hi)]
        maml = [sweep["maml"][k][key] for k in (lo, hi)]
        ratio = online[1] / online[0] if online[0] > 0 else float("inf")
        add(f"WarpGrad online {what} K={hi} / K={lo}", ratio, "<= 1.15", ratio <= 1.15)
        add(f"MAML {what} K={hi} / K={lo}", maml[1] / maml[0] if maml[0] else None,
            "> 1 (grows)", maml[1] > maml[0])
        if "live_peak_mb" in sweep["warpgrad-online"][lo]:
            online, maml = ([sweep[m][k]["live_peak_mb"] for k in (lo, hi)]
                            for m in ("warpgrad-online", "maml"))
            ratio = online[1] / online[0] if online[0] > 0 else float("inf")
            add(f"WarpGrad online live tensors' peak growth K={hi} / K={lo}", ratio, "<= 1.15",
                ratio <= 1.15)
            add(f"MAML live tensors' peak growth K={hi} / K={lo}",
                maml[1] / maml[0] if maml[0] else None, "> 1 (grows)", maml[1] > maml[0])
    return targets


# -- output ------------------------------------------------------------------------------------
def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The table's rows: (figure, case, value, unit)."""
    out: list[tuple[str, str, str, str]] = []
    for method, r in results.get("meta_iteration", {}).items():
        mark = " *" if r["extrapolated"] else ""
        out.append(("meta-iteration", method, f"{r['seconds']:.2f}{mark}", "s"))
        out.append(("meta-iteration peak RSS", method, f"{r['peak_rss_mb']:.0f}{mark}", "MB"))
        out.append(("meta-iteration peak growth", method, f"{r['peak_growth_mb']:.0f}{mark}",
                    "MB"))
        if "peak_device_mb" in r:
            out.append(("meta-iteration peak GPU memory", method,
                        f"{r['peak_device_mb']:.0f}{mark}", "MB"))
    for variant, r in results.get("overhead", {}).items():
        case = f"warp-leap-{variant} ({r['tasks']} task(s))"
        out.append(("bare compute", case, f"{r['bare_seconds']:.2f}", "s"))
        out.append(("overhead ratio", case, f"{r['ratio']:.3f}", "x"))
    sweep = results.get("memory_vs_steps", {}).get("cases", {})
    for method, by_k in sweep.items():
        for k, r in by_k.items():
            out.append(("peak growth vs K", f"{method} K={k}", f"{r['peak_growth_mb']:.1f}",
                        "MB"))
            if "peak_device_mb" in r:
                out.append(("peak GPU memory vs K", f"{method} K={k}",
                            f"{r['peak_device_mb']:.1f}", "MB"))
            if "saved_tensor_mb" in r:
                out.append(("autograd saved tensors vs K", f"{method} K={k}",
                            f"{r['saved_tensor_mb']:.1f}", "MB"))
            if "live_peak_mb" in r:
                out.append(("live tensors' peak growth vs K", f"{method} K={k}",
                            f"{r['live_peak_mb']:.1f}", "MB"))
    if "warped_step" in results:
        r = results["warped_step"]
        out.append(("adaptation step", "warped", f"{r['warped_ms']:.2f}", "ms"))
        out.append(("adaptation step", "plain", f"{r['plain_ms']:.2f}", "ms"))
        out.append(("adaptation step", "warped / plain", f"{r['ratio']:.3f}", "x"))
    for variant, modes in results.get("training", {}).items():
        for mode, r in modes.items():
            case = f"warp-leap-{variant}, {mode}"
            out.append(("whole meta-batch", case, f"{r['seconds']:.2f}", "s"))
            key = "peak_device_mb" if "peak_device_mb" in r else "peak_rss_mb"
            out.append(("whole meta-batch peak " + ("GPU memory" if key == "peak_device_mb"
                                                     else "RSS"), case, f"{r[key]:.0f}", "MB"))
    for variant, rungs in results.get("switches", {}).items():
        for rung in rungs:
            case = f"warp-leap-{variant}: {rung['label']}"
            out.append(("switches", case, f"{rung['seconds']:.1f} *", "s"))
            out.append(("switches speed-up", case, f"{rung['speedup']:.2f}", "x"))
    for variant, r in results.get("online", {}).items():
        for mode in ("online", "online-shared"):
            out.append(("online objective", f"warp-leap-{variant}, {mode}",
                        f"{r[mode]['seconds']:.1f} *", "s"))
        out.append(("online objective", f"warp-leap-{variant}, shared-step speed-up",
                    f"{r['speedup']:.2f}", "x"))
    for mode, r in results.get("host_ops", {}).items():
        out.append(("host operators per step or point", mode, f"{r['per_step_or_point']:.1f}",
                    "ops"))
        out.append(("scalar reads per meta-iteration", mode, f"{r['scalar_reads']:d}",
                    "reads"))
    for method, r in results.get("convolutions", {}).items():
        out.append(("convolutions alone", method, f"{r['seconds']:.2f} *", "s"))
        out.append(("convolutions alone", f"{method}: work", f"{r['gflop']:.1f} *", "GFLOP"))
        out.append(("convolutions alone", f"{method}: throughput", f"{r['gflop_per_s']:.0f}",
                    "GFLOP/s"))
        if "ratio" in r:
            out.append(("meta-iteration / convolutions alone", method, f"{r['ratio']:.3f}",
                        "x"))
    for variant, r in results.get("batched_objective", {}).items():
        n = r["points"]
        out.append(("objective per point", f"{variant} one at a time",
                    f"{r['sequential_ms_per_point']:.2f}", "ms"))
        out.append(("objective per point", f"{variant} batched ({n})",
                    f"{r['batched_ms_per_point']:.2f}", "ms"))
        out.append(("objective per point", f"{variant} batched / one at a time",
                    f"{r['ratio']:.3f}", "x"))
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown: machine, table, extrapolation notes and targets."""
    m, s = results["machine"], results["scale"]
    gpu = f" GPU: {m['gpu']} (the cases run there)." if m.get("gpu") else ""
    lines = [f"## warpgrad bench --scale {s['name']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"{m['threads']} threads, Python {m['python']}.{gpu}", "",
             f"Protocol: Conv4-{s['filters']} with 3x3 conv warps, {N_WAY}-way glyph alphabet "
             f"tasks, batch {s['batch_size']}, K={s['steps']} SGD steps at lr {INNER_LR}, "
             f"meta-batch {s['meta_batch']}, offline WarpGrad one point per update. Switches: "
             f"channels-last {'on' if s.get('channels_last', False) else 'off'}, precision "
             f"{s.get('precision', 'fp32')}, buffer {s.get('buffer', 'memory')}, malloc "
             f"{'tuned' if s.get('tune_malloc', True) else 'default'}, compile "
             f"{'on' if s.get('compile', False) else 'off'}, CUDA graphs "
             f"{'on' if s.get('cuda_graphs', False) else 'off'}, cuDNN benchmark "
             f"{'on' if s.get('cudnn_benchmark', False) else 'off'}.", "",
             "| figure | case | value | unit |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    notes: dict[str, list[str]] = {}
    for method, r in results.get("meta_iteration", {}).items():
        if "how" in r:
            notes.setdefault(r["how"], []).append(method)
    if notes:
        lines += [""] + [f"- \\* extrapolated ({', '.join(methods)}): {how}."
                         for how, methods in notes.items()]
    if "memory_vs_steps" in results:
        lines += ["", f"Peak memory vs K: {results['memory_vs_steps']['note']}."]
    if "switches" in results:
        lines += ["", "Switches (\\*): one task measured per rung, seconds x the meta-batch; "
                  "speed-up over the first rung, measured in the same run."]
    if "online" in results:
        lines += ["", "Online objective (\\*): one task measured per case, seconds x the "
                  "meta-batch."]
    if "convolutions" in results:
        lines += ["", "Convolutions alone (\\*): every convolution call of the meta-iteration "
                  "(forward, input and weight gradients; recorded at K = 1 and 2, counted for "
                  "K steps and the whole meta-batch) replayed alone on fresh tensors of the "
                  "same layout: the arithmetic floor of the time targets on this machine."]
    if results.get("targets"):
        lines += ["", "| target | value | limit | met |", "|---|---|---|---|"]
        for t in results["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:.3f}"
            met = {True: "yes", False: "no", None: "n/a (not full scale)"}[t["met"]]
            lines.append(f"| {t['target']} | {value} | {t['limit']} | {met} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out`` (created); returns their paths."""
    from warpgrad.experiments.checkpoint import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", results)
    (out / "bench.md").write_text(markdown(results))
    return out / "bench.json", out / "bench.md"


def main(scale: str = "small", out: str | os.PathLike = "runs/bench", *,
         threads: int | None = None, measured_tasks: int | None = None,
         sections: tuple[str, ...] | None = None, channels_last: bool = False,
         precision: str = "fp32", buffer: str = "memory", tune_malloc: bool = True,
         compile_forward: bool = False, cuda_graphs: bool = False,
         cudnn_benchmark: bool = False, device: str = "cpu",
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite, print the markdown and write ``bench.json``/``bench.md`` to ``out``.
    The switches apply to every figure except figure 6, which varies them itself."""
    from dataclasses import replace

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; expected 'fp32' or 'bf16'")
    if buffer not in ("memory", "float16", "disk"):
        raise ValueError(f"unknown buffer {buffer!r}; expected 'memory', 'float16' or 'disk'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here")
    chosen = replace(SCALES[scale], channels_last=channels_last, precision=precision,
                     buffer=buffer, tune_malloc=tune_malloc, compile=compile_forward,
                     cuda_graphs=cuda_graphs, cudnn_benchmark=cudnn_benchmark, device=device)
    if threads is not None:
        chosen = replace(chosen, threads=threads)
    if measured_tasks is not None:
        chosen = replace(chosen, measured_tasks=min(measured_tasks, chosen.meta_batch))
    suite = Suite(log=log) if sections is None else Suite(tuple(sections), log)
    results = run_suite(chosen, suite)
    log(markdown(results))
    json_path, md_path = write_results(results, out)
    log(f"wrote {json_path} and {md_path}")
    return results
