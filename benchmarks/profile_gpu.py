"""Where one Warp-Leap task's meta-iteration spends its time: ``torch.profiler`` over the
multi-shot protocol's shapes, on the device the bench would use.

    python benchmarks/profile_gpu.py [--device cuda] [--scale full] [--variant first-order]
                                     [--cuda-graphs | --reference] [--out FILE]

Prints (and writes to FILE) the wall time, the time the device spent in kernels, their
ratio (how busy the GPU was), and the top operators by host and by device time. The
figures of BENCHMARKS.md's GPU section say the GPU is mostly idle under eager PyTorch; this
says what the host does meanwhile. The model is the bench's: Conv4 through
:func:`warpgrad.accel.convert`, or the reference core with ``--reference``. ``gpu.sh`` runs
it as its "profile" stage.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from warpgrad import bench
from warpgrad.bench import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", default="full", choices=sorted(bench.SCALES))
    parser.add_argument("--variant", default="first-order", choices=["first-order", "exact"])
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--reference", action="store_true",
                        help="the reference core (no warpgrad.accel.convert)")
    parser.add_argument("--steps", type=int, help="K (default: the scale's)")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"device {args.device!r} requested but CUDA is not available here")
    if args.reference and args.cuda_graphs:
        parser.error("the reference core has no CUDA graphs")

    scale = replace(bench.SCALES[args.scale], device=args.device, cuda_graphs=args.cuda_graphs,
                    reference=args.reference)
    common.use_switches(scale)
    steps = args.steps or scale.steps
    method = f"warp-leap-{args.variant}"
    tasks = common.build_tasks(scale.batch_size, 1)
    common.warm_up(method, scale.filters, tasks)
    learner = common.build_learner(method, common.build_model(scale.filters), steps)
    learner.meta_step(tasks)  # captures graphs (and warms caches) at these shapes
    on_gpu = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    common.sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        learner.meta_step(tasks)
        common.sync()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    lines = [f"{method}, 1 task, K={steps}, batch {scale.batch_size}, Conv4-{scale.filters}, "
             f"device {args.device}, CUDA graphs {'on' if args.cuda_graphs else 'off'}, "
             f"{'reference core' if args.reference else 'accelerator'}",
             f"wall (profiled): {wall:.3f} s"]
    if on_gpu:
        # kernel rows only: an operator's device time counts its kernels a second time
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy = sum(_device_us(e) for e in kernels) / 1e6
        lines.append(f"device busy: {busy:.3f} s ({100 * busy / wall:.0f}% of wall), "
                     f"{sum(e.count for e in kernels)} kernels")
        try:
            table = events.table(sort_by="self_device_time_total", row_limit=20)
        except (AttributeError, KeyError, ValueError):  # older names
            table = events.table(sort_by="self_cuda_time_total", row_limit=20)
        lines += ["", "top by device time:", table]
    lines += ["", "top by host time:", events.table(sort_by="self_cpu_time_total", row_limit=25)]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report)


def _device_us(event) -> float:
    return getattr(event, "self_device_time_total", None) or getattr(
        event, "self_cuda_time_total", 0.0)


if __name__ == "__main__":
    main()
