"""The convolutions a computation runs, recorded, then replayed on their own: their time is
the arithmetic floor of that computation on a machine where convolutions dominate (figure 10
of ``warpgrad bench``).

:func:`record_convolutions` runs a function under a dispatch mode that notes every
``aten.convolution`` and ``aten.convolution_backward`` call, with the shapes, strides and
dtypes of its tensors and its other arguments: what the convolution library picks its kernel
by. Calls from ``torch.func`` transforms are seen too, below the transforms; calls inside a
compiled graph or a CUDA graph replay are not (record eagerly). :func:`replay` runs each
distinct call again on fresh tensors of the same layout and times it; the sum over calls is
what the convolutions alone cost. Inputs stay in the cache between repetitions where they
fit, so the figure is a floor, not a forecast.

:func:`time_operators` times every operator call (not only the convolutions) where it runs,
in the computation's own order and caches: the time inside PyTorch's kernels, without the
Python, autograd and dispatch around them, a floor that the computation's wall time cannot
go under with these kernels (CPU only: on a GPU a call returns before its kernel ends).
Unlike a replay it pays the cache misses the computation's own order causes.

FLOPs count a multiply-add as two, as ``torch.utils.flop_counter`` does: a convolution's
forward, its gradient for the input and its gradient for the weight cost the same.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_Layout = tuple[tuple[int, ...], tuple[int, ...], torch.dtype]

_FORWARD = torch.ops.aten.convolution.default
_BACKWARD = torch.ops.aten.convolution_backward.default


@dataclass(frozen=True)
class ConvCall:
    """One distinct convolution call: ``backward`` or forward, the layout (shape, strides,
    dtype) of each tensor argument (``None`` for an absent bias), the other arguments, and
    the output's shape."""

    backward: bool
    tensors: tuple[_Layout | None, ...]
    rest: tuple[Any, ...]
    out_shape: tuple[int, ...]

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of this call (the input's and the weight's gradient each as
        much as the forward; the bias's is not counted)."""
        if self.backward:  # (grad_out, input, weight, bias_sizes, stride, padding,
            # dilation, transposed, output_padding, groups, output_mask)
            x, w = self.tensors[1][0], self.tensors[2][0]
            transposed, mask = self.rest[4], self.rest[7]
            passes = int(mask[0]) + int(mask[1])
        else:  # (input, weight, bias, stride, padding, dilation, transposed, ...)
            x, w = self.tensors[0][0], self.tensors[1][0]
            transposed, passes = self.rest[3], 1
        # the output's spatial size for a convolution, the input's for a transposed one
        spatial = x[2:] if transposed else self.out_shape[2:]
        c_out, c_in_per_group, *kernel = w
        return 2 * x[0] * c_out * c_in_per_group * math.prod(kernel) * math.prod(spatial) * passes

    def make_tensors(self, device: torch.device | str) -> list[torch.Tensor | None]:
        """Fresh tensors of this call's layout on ``device`` (standard normal values; views
        of a storage of the recorded extent, so that expanded strides are reproduced too)."""
        out = []
        for layout in self.tensors:
            if layout is None:
                out.append(None)
                continue
            shape, stride, dtype = layout
            extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
            storage = torch.randn(extent, dtype=dtype, device=device)
            out.append(storage.as_strided(shape, stride))
        return out

    def run(self, tensors: list[torch.Tensor | None]) -> Any:
        """The call on ``tensors`` (from :meth:`make_tensors`)."""
        if self.backward:
            grad, x, w = tensors
            return _BACKWARD(grad, x, w, *self.rest)
        x, w, b = tensors
        return _FORWARD(x, w, b, *self.rest)


def _layout(t: Any) -> _Layout | None:
    return None if t is None else (tuple(t.shape), tuple(t.stride()), t.dtype)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[ConvCall] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is _FORWARD or func is _BACKWARD:  # both take three tensors first
            out_shape = tuple(out.shape) if func is _FORWARD else tuple(args[0].shape)
            self.calls[ConvCall(func is _BACKWARD, tuple(_layout(a) for a in args[:3]),
                                _hashable(args[3:]), out_shape)] += 1
        return out


def record_convolutions(fn: Callable[[], Any]) -> Counter[ConvCall]:
    """Run ``fn()`` and return how many times it made each distinct convolution call."""
    recorder = _Recorder()
    with recorder:
        fn()
    return recorder.calls


@dataclass
class OperatorTime:
    """What :func:`time_operators` measured: ``seconds`` inside all operator calls and
    ``convolution_seconds`` inside the convolutions' (forward and backward), each less the
    timer's own cost, ``timer_seconds`` per call (on a one-element addition); ``calls``,
    ``convolution_calls``; ``wall_seconds``, the whole call of ``fn`` (timing adds to it)."""

    seconds: float = 0.0
    convolution_seconds: float = 0.0
    calls: int = 0
    convolution_calls: int = 0
    timer_seconds: float = 0.0
    wall_seconds: float = 0.0


class _Clock(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.time = OperatorTime()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        self.time.seconds += elapsed
        self.time.calls += 1
        if func is _FORWARD or func is _BACKWARD:
            self.time.convolution_seconds += elapsed
            self.time.convolution_calls += 1
        return out


def _timed(fn: Callable[[], Any]) -> OperatorTime:
    clock = _Clock()
    start = time.perf_counter()
    with clock:
        fn()
    clock.time.wall_seconds = time.perf_counter() - start
    return clock.time


def time_operators(fn: Callable[[], Any]) -> OperatorTime:
    """Run ``fn()`` on the CPU and add up the time spent inside each operator call, below
    autograd and the ``torch.func`` transforms, as the module docstring says. The clock's
    own cost per call (its median over one-element additions, whose kernel it includes, so
    that the figure errs low) is taken off every call."""
    one = torch.ones(1)
    costs = [_timed(lambda: [one + one for _ in range(200)]) for _ in range(11)]
    timer = statistics.median(c.seconds / c.calls for c in costs)
    timed = _timed(fn)
    timed.timer_seconds = timer
    timed.seconds = max(0.0, timed.seconds - timer * timed.calls)
    timed.convolution_seconds = max(0.0, timed.convolution_seconds
                                    - timer * timed.convolution_calls)
    return timed


@dataclass
class Replay:
    """What :func:`replay` measured: ``seconds`` (the calls' count-weighted median times),
    ``flops``, ``calls`` (in all) and ``distinct`` calls."""

    seconds: float
    flops: int
    calls: int
    distinct: int


def replay(calls: Counter[ConvCall], device: torch.device | str = "cpu",
           repeats: int = 5) -> Replay:
    """Time each distinct call of ``calls`` alone on fresh tensors (one warm-up, then the
    median of ``repeats`` runs, the device synchronised around each on a GPU) and add the
    times up, each as often as it was called."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = 0.0
    with torch.no_grad():
        for call, count in calls.items():
            tensors = call.make_tensors(device)
            call.run(tensors)
            times = []
            for _ in range(max(1, repeats)):
                sync()
                start = time.perf_counter()
                call.run(tensors)
                sync()
                times.append(time.perf_counter() - start)
            seconds += count * statistics.median(times)
    return Replay(seconds, sum(c.flops * n for c, n in calls.items()), sum(calls.values()),
                  len(calls))
