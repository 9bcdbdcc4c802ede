"""The replay buffer: trajectory points stored as rows of preallocated flat tensors.

A point is (θ_k ``[P]``, optimiser state ``[P]`` or none, task index, step k). Storing rows of
one tensor (not per-step state-dict clones) keeps memory at one parameter vector per point and
lets the meta-objective gather many points with one index operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from warpgrad.engine.adapt import StepRecord


@dataclass
class Points:
    """A gathered set of ``n`` buffer points: ``thetas [n, P]``, ``states [n, P]`` or
    ``None``, ``task_index [n]`` and ``step [n]`` (int64)."""

    thetas: Tensor
    states: Tensor | None
    task_index: Tensor
    step: Tensor

    def __len__(self) -> int:
        return len(self.thetas)


class ReplayBuffer:
    """Fixed-capacity store of trajectory points.

    Args:
        capacity: maximum number of points (e.g. meta-batch x (K + 1)).
        num_params: P, the length of θ.
        with_state: also store the optimiser state (needed with momentum).
        device: where points are stored.
        dtype: the parameters' dtype, which gathered points have.
        storage_dtype: how points are stored, default ``dtype`` (``torch.float16`` halves
            memory at a precision cost).
    """

    def __init__(self, capacity: int, num_params: int, *, with_state: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 storage_dtype: torch.dtype | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be positive, got {capacity}")
        self.dtype = dtype
        storage_dtype = storage_dtype or dtype
        self.thetas = torch.empty(capacity, num_params, device=device, dtype=storage_dtype)
        self.states = (torch.empty(capacity, num_params, device=device, dtype=storage_dtype)
                       if with_state else None)
        self.task_index = torch.empty(capacity, dtype=torch.long)
        self.step = torch.empty(capacity, dtype=torch.long)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def capacity(self) -> int:
        return len(self.thetas)

    def clear(self) -> None:
        self.size = 0

    def add(self, theta: Tensor, state: Tensor | None, task_index: int, step: int) -> None:
        """Store one point (copied, detached)."""
        if self.size == self.capacity:
            raise RuntimeError(f"replay buffer is full ({self.capacity} points); clear it first")
        i = self.size
        self.thetas[i].copy_(theta.detach())
        if self.states is not None:
            if state is None:
                self.states[i].zero_()
            else:
                self.states[i].copy_(state.detach())
        self.task_index[i] = task_index
        self.step[i] = step
        self.size += 1

    def gather(self, index: Tensor) -> Points:
        """The points at ``index`` (``[n]`` int64, each < ``len(self)``), in ``dtype``."""
        device_index = index.to(self.thetas.device)
        thetas = self.thetas[device_index].to(self.dtype)
        states = None if self.states is None else self.states[device_index].to(self.dtype)
        return Points(thetas, states, self.task_index[index], self.step[index])

    def recorder(self, task_index: int, stride: int = 1) -> _Recorder:
        """An observer for :func:`~warpgrad.engine.adapt.adapt` that stores every
        ``stride``-th point of one task's trajectory (θ_0, θ_stride, ..., and θ_K)."""
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        return _Recorder(self, task_index, stride)


class _Recorder:
    needs_final_loss = False

    def __init__(self, buffer: ReplayBuffer, task_index: int, stride: int) -> None:
        self.buffer, self.task_index, self.stride = buffer, task_index, stride

    def observe(self, record: StepRecord) -> None:
        final = record.grad is None
        if record.step % self.stride == 0 or final:
            self.buffer.add(record.theta, record.state, self.task_index, record.step)
