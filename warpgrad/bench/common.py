"""What every figure of ``warpgrad bench`` shares: the scales, the case's switches, the
measurements, the protocol's tasks, models and learners, and the fresh process each case
runs in.

A case is a function ``case(scale, *args) -> dict`` registered under a name with
:func:`case`; :func:`run_case` runs it in a forkserver child, so that neither its time nor
its peak memory is contaminated by another case. Inside the child :data:`SWITCHES` holds the
scale's switches, which :func:`build_model` and :func:`build_learner` read.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

MB = 1e6
"""Memory figures are in MB of 10^6 bytes."""
N_WAY = 20
INNER_LR = 0.1
META_METHODS = ("warp-leap-exact", "warp-leap-first-order", "leap", "reptile", "fomaml")
"""Figure 1's methods; the first two are also figures 2 and 10's."""


@dataclass(frozen=True)
class Scale:
    """The shapes of one benchmark run, and the switches every case uses.

    Shapes: ``meta_batch``, the protocol's meta-batch; ``measured_tasks``, how many of its
    tasks are actually run (figures are scaled by ``meta_batch / measured_tasks`` when
    fewer); ``steps``, K; ``batch_size`` and ``filters``, the batch and the Conv4 width;
    ``step_reps``, steps timed per case of figure 4; ``points``, buffer points of figure 5;
    ``k_values``, ``k_filters``, ``k_batch``, the adaptation lengths and shapes of figure 3
    (meta-batch 1).

    Switches: ``threads`` (PyTorch's CPU threads); ``reference`` (the models stay the
    reference core, not put through :func:`warpgrad.accel.convert`); ``precision``
    (``fp32`` or ``bf16``, the accelerator's autocast); ``buffer`` (the offline replay
    buffer: ``memory``, ``float16`` or ``disk``); ``tune_malloc``
    (:func:`warpgrad.accel.tune_allocator`); ``cuda_graphs`` (the accelerator replays its
    fixed-shape passes from CUDA graphs); ``cudnn_benchmark``
    (``torch.backends.cudnn.benchmark``: cuDNN times its convolution algorithms at each new
    shape and keeps the fastest; a GPU switch) and ``device`` (``cpu`` or ``cuda``: where
    models, data and buffers live).
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
    reference: bool = False
    precision: str = "fp32"
    buffer: str = "memory"
    tune_malloc: bool = True
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
"""``full`` is the original's multi-shot protocol; ``small`` is a quick check of the suite."""

SWITCH_NAMES = ("reference", "precision", "buffer", "cuda_graphs", "device")
SWITCHES: dict[str, Any] = {f.name: f.default for f in fields(Scale) if f.name in SWITCH_NAMES}
"""The running case's :class:`Scale` switches (:func:`use_switches` sets them in the case's
process; until then :class:`Scale`'s defaults)."""


def use_switches(scale: Scale) -> None:
    """Make ``scale``'s switches the ones :func:`build_model` and the others read."""
    SWITCHES.update({name: getattr(scale, name) for name in SWITCH_NAMES})


# -- measurement (inside the case's process) ---------------------------------------------------
def rss_bytes() -> int:
    """The current resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def on_gpu() -> bool:
    return SWITCHES["device"].startswith("cuda")


def sync() -> None:
    """Wait for the device's queued work, so that a wall-clock reading includes it."""
    if on_gpu():
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any]) -> dict[str, float]:
    """Run ``fn`` once: ``seconds`` (wall), ``peak_rss_mb`` (the process's peak RSS) and
    ``peak_growth_mb`` (that peak minus the RSS just before ``fn``); on a GPU also
    ``peak_device_mb`` (``torch.cuda.max_memory_allocated`` during ``fn``)."""
    gc.collect()
    gpu = on_gpu()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = rss_bytes()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    seconds = time.perf_counter() - start
    peak = peak_bytes()
    result = {"seconds": seconds, "peak_rss_mb": peak / MB,
              "peak_growth_mb": max(peak - base, 0) / MB}
    if gpu:
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / MB
    return result


# -- the protocol's data, models and learners ---------------------------------------------------
_GLYPHS: list = []


def glyphs():
    """The glyph dataset, loaded once per process (the forkserver loads it before forking the
    cases, see :func:`run_case`)."""
    from warpgrad.data import load_glyphs

    if not _GLYPHS:
        _GLYPHS.append(load_glyphs())
    return _GLYPHS[0]


if os.environ.get("WARPGRAD_BENCH_FORKSERVER") == "1":  # imported as the forkserver's preload
    glyphs()


def build_tasks(batch_size: int, n: int) -> list:
    """``n`` of the protocol's alphabet tasks (20-way, batches of ``batch_size``) on the
    case's device, cycling through the training alphabets."""
    from warpgrad.data import AlphabetTasks

    tasks = AlphabetTasks(glyphs(), batch_size=batch_size, n_train_tasks=n,
                          device=SWITCHES["device"]).train
    return [tasks[i % len(tasks)] for i in range(n)]


def build_model(filters: int, warped: bool = True, *, cuda_graphs: bool | None = None,
                prefetch_mb: float | None = None):
    """Conv4-``filters`` for 20-way 28x28 glyphs, with 3x3 conv warps unless ``warped`` is
    false, seeded, on the case's device. Unless the case runs on the reference core it goes
    through :func:`warpgrad.accel.convert` with the case's precision and ``cuda_graphs``
    (default: the case's) and ``prefetch_mb`` (``0``: batches drawn one at a time)."""
    from warpgrad import accel
    from warpgrad.models.backbones import conv4

    torch.manual_seed(0)
    model = conv4(N_WAY, filters=filters, warp="conv3x3" if warped else None)
    if not SWITCHES["reference"]:
        graphs = SWITCHES["cuda_graphs"] if cuda_graphs is None else cuda_graphs
        model = accel.convert(model, precision=SWITCHES["precision"], cuda_graphs=graphs,
                              prefetch_mb=prefetch_mb)
    return model.to(SWITCHES["device"])


def build_learner(method: str, model, steps: int, regime: str = "offline", *,
                  points_per_update: int = 1):
    """The meta-learner of ``method`` (a :data:`~warpgrad.algorithms.methods.METHODS` name,
    or ``warp-leap-VARIANT`` with an optional ``@online`` or ``@online-shared``, figure 7)
    with K = ``steps`` at the protocol's inner learning rate, the buffer where the case's
    switch keeps it."""
    from warpgrad.algorithms.methods import make_learner
    from warpgrad.algorithms.warpgrad import WarpGrad

    if method.startswith("warp-leap-"):
        variant, _, mode = method.removeprefix("warp-leap-").partition("@")
        regime = "online" if mode.startswith("online") else regime
        buffer = SWITCHES["buffer"]
        warp = WarpGrad(variant, regime, points_per_update=points_per_update,
                        batched=points_per_update > 1, buffer_on_disk=buffer == "disk",
                        buffer_dtype=torch.float16 if buffer == "float16" else None,
                        share_step=mode == "online-shared")
        return make_learner("warp-leap", model, F.cross_entropy, steps=steps, inner_lr=INNER_LR,
                            warp=warp)
    return make_learner(method, model, F.cross_entropy, steps=steps, inner_lr=INNER_LR)


def is_plain(method: str) -> bool:
    """Whether ``method`` runs on a Conv4 without warps."""
    return not method.startswith("warp")


def warm_up(method: str, filters: int, tasks: list) -> None:
    """One 1-step meta-iteration on one task: loads kernels and allocators before timing."""
    build_learner(method, build_model(filters, not is_plain(method)), 1).meta_step(tasks[:1])


# -- the cases and their processes ---------------------------------------------------------------
CASES: dict[str, Callable[..., dict[str, Any]]] = {}
"""Every case by name (the figure modules register theirs with :func:`case`)."""


def case(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Register the decorated function as the case ``name`` of :func:`run_case`."""
    def register(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        CASES[name] = fn
        return fn
    return register


def child(kind: str, scale: Scale, args: tuple) -> dict[str, Any]:
    """The case ``kind`` at ``scale``, in this process, under the scale's switches."""
    from warpgrad.accel.alloc import tune_allocator

    if scale.tune_malloc:
        tune_allocator()
    torch.backends.cudnn.benchmark = scale.cudnn_benchmark
    use_switches(scale)
    if scale.threads is not None:
        torch.set_num_threads(scale.threads)
    return CASES[kind](scale, *args)


def run_case(kind: str, scale: Scale, *args: Any) -> dict[str, Any]:
    """Run one case in a fresh process (a forkserver child) and return its figures."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    # the forkserver imports torch and this package (loading the glyphs) once; every case is
    # a fresh fork of it, so cases share no allocator state and start in milliseconds
    os.environ["WARPGRAD_BENCH_FORKSERVER"] = "1"
    ctx.set_forkserver_preload(["torch", "warpgrad.bench"])
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
        return pool.submit(child, kind, scale, args).result()


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
