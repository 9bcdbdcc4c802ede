"""CUDA graphs for the engine's fixed-shape passes (``convert(model, cuda_graphs=True)``).

On a GPU, a Conv4 step at the multi-shot protocol's shapes is a few hundred tiny kernels,
and eager PyTorch spends far longer launching them than the GPU spends running them
(docs/performance.md).
A CUDA graph records the kernels of one pass once and replays them with one launch.

:class:`GraphCache` captures a *pure* function of tensors (no in-place change to anything it
does not create, no host synchronisation): an adaptation step's loss and gradient, or one
offline WarpGrad update's meta-loss and meta-gradient. Each call copies the arguments into
the graph's static inputs, replays, and returns clones of the static outputs, so the caller
sees fresh tensors exactly as from an eager call. Tensors the function reads besides its
arguments (φ, θ_0, the inner learning rates) are read where they live at replay time; their
addresses are part of the cache key, so a model whose parameters moved is captured afresh,
never replayed against stale memory.

On the CPU the same plumbing runs without capture (static inputs, a call, cloned outputs):
no speed-up, but the tests check there that every graphed path computes what the eager one
does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from warpgrad.accel.autograd import detached
from warpgrad.accel.scopes import Scope

GraphedFn = Callable[..., Sequence[Tensor | None]]
"""A pure function of tensors returning tensors (``None`` where, e.g., a gradient does not
exist: it stays ``None`` on every replay)."""

WARM_UP_CALLS = 2
"""Eager calls on a side stream before capture: cuDNN picks its algorithms and autograd
initialises its device threads outside the graph, as PyTorch's CUDA-graph notes ask."""


@dataclass
class _Captured:
    inputs: list[Tensor]
    outputs: list[Tensor | None]
    graph: torch.cuda.CUDAGraph | None  # None: the CPU rehearsal (call instead of replay)
    fn: GraphedFn


class GraphCache:
    """Captured graphs by (name, argument shapes, addresses of what the function reads).

    A graph reads its ``reads`` at the addresses they had at capture: equal addresses (and
    shapes and dtypes) mean the replay reads the right memory, whatever tensor lives there.

    Args:
        max_graphs: graphs kept at once; the oldest is dropped beyond it (each holds its own
            memory pool: the activations of one pass).
    """

    def __init__(self, max_graphs: int = 16) -> None:
        self.max_graphs = max_graphs
        self._graphs: dict[Hashable, _Captured] = {}
        self.captures = 0
        """How many graphs were captured (or rehearsed) so far: a recapture shows here."""

    def __call__(self, name: Hashable, fn: GraphedFn, args: Sequence[Tensor],
                 reads: Iterable[Tensor] = (), *, fresh: bool = True) -> list[Tensor | None]:
        """``fn(*args)``, replayed from a graph captured at the first call with these shapes.

        ``name`` tells apart functions that differ in more than their arguments (a variant,
        a precision switch); ``reads``: the tensors ``fn`` reads besides ``args``.
        ``fresh=False`` returns the graph's own output tensors instead of clones (one copy
        kernel fewer per output), which the next replay of that graph overwrites."""
        key = (name, tuple((a.shape, a.dtype, a.device, a.stride()) for a in args),
               tuple((t.data_ptr(), t.shape, t.dtype) for t in reads))
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(fn, args)
            except RuntimeError as error:  # an op that cannot be captured: stay correct
                label = name[0] if isinstance(name, tuple) else name
                warnings.warn(f"warpgrad: could not capture a CUDA graph for {label!r}, "
                              f"running it eagerly ({error})", RuntimeWarning, stacklevel=2)
                entry = _rehearsal(fn, args)
            if len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = entry
        with torch.no_grad():
            for static, value in zip(entry.inputs, args):
                static.copy_(value)
        if entry.graph is None:
            with _STANDING_IN:
                outputs = list(entry.fn(*entry.inputs))
        else:
            entry.graph.replay()
            outputs = entry.outputs
        if not fresh:
            return outputs
        return [None if o is None else detached(o).clone() for o in outputs]

    def _capture(self, fn: GraphedFn, args: Sequence[Tensor]) -> _Captured:
        self.captures += 1
        if not all(a.is_cuda for a in args):
            return _rehearsal(fn, args)
        inputs = [a.detach().clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_CALLS):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = [None if o is None else o.detach() for o in fn(*inputs)]
        return _Captured(inputs, outputs, graph, fn)


_STANDING_IN = Scope()
"""Open while a graphed function runs eagerly in place of a replay."""


def rehearsing() -> bool:
    """Whether a graphed function is running eagerly in place of a replay (the CPU
    rehearsal, or a pass that could not be captured). On a GPU, a replay's operators cost
    the host nothing; ``warpgrad bench`` figure 9 counts only the others."""
    return bool(_STANDING_IN)


def _rehearsal(fn: GraphedFn, args: Sequence[Tensor]) -> _Captured:
    """Static inputs and no graph: each call runs ``fn`` on them (the CPU, or a pass that
    could not be captured)."""
    return _Captured([a.detach().clone() for a in args], [], None, fn)


def reads_of(*modules: torch.nn.Module) -> list[Tensor]:
    """What a graphed pass of these modules reads besides its arguments: their parameters
    and buffers (φ, θ_0, the inner optimiser's learning rates)."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]
