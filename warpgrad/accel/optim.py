"""``torch.optim.SGD`` and ``Adam`` without the import of ``torch._dynamo`` they trigger.

PyTorch wraps ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` in ``torch._disable_dynamo``, and every optimiser's ``step`` in a helper
that puts graph breaks around it; both import ``torch._dynamo`` on their first call, which
imports sympy, ``torch.fx``'s symbolic shapes and ~800 modules: seconds of start-up and tens
of MB of resident memory per process (docs/performance.md). The accelerator never compiles
an optimiser step, so the subclasses
here call the undecorated methods (``__wrapped__``, which ``functools.wraps`` records) and
run ``step`` under ``torch.no_grad()``, which is what the wrapper does for a
non-differentiable optimiser. Everything else, the state-dict format included, is
PyTorch's; they are ``torch.optim`` optimisers to schedulers and checkpoints.

The unwrapping relies on PyTorch's private decorators; ``tests/test_accel_optim.py`` fails
loudly when a PyTorch release changes them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["SGD", "Adam"]


def _undecorated(method: Callable[..., Any]) -> Callable[..., Any]:
    # the whole chain: once a torch.optim.SGD exists, PyTorch has wrapped SGD.step again
    # (its profiling hook) around the graph-break wrapper
    return inspect.unwrap(method)


_Optimizer = torch.optim.Optimizer


class _NoDynamo:
    add_param_group = _undecorated(_Optimizer.add_param_group)
    zero_grad = _undecorated(_Optimizer.zero_grad)
    state_dict = _undecorated(_Optimizer.state_dict)
    load_state_dict = _undecorated(_Optimizer.load_state_dict)


class SGD(_NoDynamo, torch.optim.SGD):
    """``torch.optim.SGD`` (same arguments and state) that does not import ``torch._dynamo``."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        return _undecorated(torch.optim.SGD.step)(self, closure)


class Adam(_NoDynamo, torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments and state) that does not import
    ``torch._dynamo``."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        return _undecorated(torch.optim.Adam.step)(self, closure)
