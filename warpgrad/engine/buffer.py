"""The replay buffer: trajectory points stored as rows of preallocated flat tensors.

A point is (θ_k ``[P]``, optimiser state ``[P]`` or none, task index, step k). Storing rows of
one tensor (not per-step state-dict clones) keeps memory at one parameter vector per point and
lets the meta-objective gather many points with one index operation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from warpgrad.engine.backend import detached

if TYPE_CHECKING:
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
        device: where gathered points go (and where points are stored in memory).
        dtype: the parameters' dtype, which gathered points have.
        storage_dtype: how points are stored, default ``dtype`` (``torch.float16`` halves
            memory at a precision cost).
        on_disk: keep the points in an anonymous temporary file instead of memory (lossless;
            the process's memory no longer grows with the buffer; rows are written with
            ``pwrite`` and read back with ``pread``). The file is removed when the buffer
            is.
        directory: where that file goes (default: the system's temporary directory).
    """

    def __init__(self, capacity: int, num_params: int, *, with_state: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 storage_dtype: torch.dtype | None = None, on_disk: bool = False,
                 directory: str | os.PathLike | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be positive, got {capacity}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        storage_dtype = storage_dtype or dtype
        rows = _DiskRows if on_disk else _MemoryRows
        self._thetas = rows(capacity, num_params, storage_dtype, self.device, directory)
        self._states = (rows(capacity, num_params, storage_dtype, self.device, directory)
                        if with_state else None)
        self.task_index = torch.empty(capacity, dtype=torch.long)
        self.step = torch.empty(capacity, dtype=torch.long)
        # written through numpy: a point's bookkeeping costs no tensor operators
        self._task_index_np, self._step_np = self.task_index.numpy(), self.step.numpy()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def capacity(self) -> int:
        return self._thetas.capacity

    @property
    def memory_bytes(self) -> int:
        """Bytes of point storage held in memory (0 when the points live on disk)."""
        return sum(rows.memory_bytes for rows in (self._thetas, self._states) if rows)

    def clear(self) -> None:
        self.size = 0

    def add(self, theta: Tensor, state: Tensor | None, task_index: int, step: int) -> None:
        """Store one point (copied, detached)."""
        if self.size == self.capacity:
            raise RuntimeError(f"replay buffer is full ({self.capacity} points); clear it first")
        i = self.size
        self._thetas.write(i, detached(theta))
        if self._states is not None:
            self._states.write(i, torch.zeros_like(theta) if state is None else detached(state))
        self._task_index_np[i] = task_index
        self._step_np[i] = step
        self.size += 1

    def gather(self, index: Tensor) -> Points:
        """The points at ``index`` (``[n]`` int64, each < ``len(self)``), in ``dtype``."""
        thetas, states = self.read(index)
        index = index.cpu()
        return Points(thetas, states, self.task_index[index], self.step[index])

    def read(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """``thetas [n, P]`` and ``states [n, P]`` (or ``None``) of the points at ``index``,
        in ``dtype``; an ``index`` already on :attr:`index_device` is not copied."""
        thetas = self._thetas.read(index).to(self.dtype)
        states = None if self._states is None else self._states.read(index).to(self.dtype)
        return thetas, states

    @property
    def index_device(self) -> torch.device:
        """Where :meth:`read`'s indices are used: the device of rows in memory, the host
        for rows on disk."""
        return self._thetas.index_device

    def recorder(self, task_index: int, stride: int = 1, *,
                 steps: Collection[int] | None = None) -> _Recorder:
        """An observer for :func:`~warpgrad.engine.adapt.adapt` that stores every
        ``stride``-th point of one task's trajectory (θ_0, θ_stride, ..., and θ_K), or,
        when ``steps`` is given, exactly the points of those steps."""
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        return _Recorder(self, task_index, stride, steps)


class _Recorder:
    needs_final_loss = False

    def __init__(self, buffer: ReplayBuffer, task_index: int, stride: int,
                 steps: Collection[int] | None) -> None:
        self.buffer, self.task_index, self.stride, self.steps = buffer, task_index, stride, steps

    def observe(self, record: StepRecord) -> None:
        if self.steps is not None:
            keep = record.step in self.steps
        else:
            keep = record.step % self.stride == 0 or record.grad is None  # θ_K: no gradient
        if keep:
            self.buffer.add(record.theta, record.state, self.task_index, record.step)


class _MemoryRows:
    """``capacity`` preallocated rows of ``width`` values in one tensor."""

    def __init__(self, capacity: int, width: int, dtype: torch.dtype, device: torch.device,
                 directory: str | os.PathLike | None) -> None:
        self.rows = torch.empty(capacity, width, device=device, dtype=dtype)
        self.index_device = device
        self.capacity = capacity
        self.memory_bytes = self.rows.numel() * self.rows.element_size()

    def write(self, i: int, row: Tensor) -> None:
        self.rows[i].copy_(row)

    def read(self, index: Tensor) -> Tensor:
        return self.rows[index.to(self.rows.device)]


class _DiskRows:
    """The same rows in an anonymous temporary file, written and read with ``pwrite`` /
    ``pread`` (never memory-mapped, so they do not count towards the process's memory)."""

    def __init__(self, capacity: int, width: int, dtype: torch.dtype, device: torch.device,
                 directory: str | os.PathLike | None) -> None:
        self.capacity, self.width, self.dtype, self.device = capacity, width, dtype, device
        self.index_device = torch.device("cpu")
        self.memory_bytes = 0
        self.row_bytes = width * torch.empty((), dtype=dtype).element_size()
        self.directory = str(directory or tempfile.gettempdir())
        # lives as long as the buffer; unlinked at once, so it vanishes when closed or collected
        self.file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115
        self.fd = self.file.fileno()

    def write(self, i: int, row: Tensor) -> None:
        data = row.to("cpu", self.dtype).contiguous().view(torch.uint8).numpy()
        written = os.pwrite(self.fd, data, i * self.row_bytes)  # from the tensor's memory
        if written != self.row_bytes:
            raise OSError(f"replay buffer file: wrote {written} of {self.row_bytes} bytes "
                          f"(disk full in {self.directory}?)")

    def read(self, index: Tensor) -> Tensor:
        out = torch.empty(len(index), self.width, dtype=self.dtype)
        view = out.view(torch.uint8).numpy()
        for j, i in enumerate(index.tolist()):
            got = os.preadv(self.fd, [view[j]], i * self.row_bytes)
            if got != self.row_bytes:
                raise OSError(f"replay buffer file: read {got} of {self.row_bytes} bytes "
                              f"for point {i}")
        return out.to(self.device)
