"""Sine-wave regression tasks (Finn et al., 2017): y = A sin(x − b).

A ~ U[0.1, 5], b ~ U[0, π], x ~ U[-5, 5]; K training points and a held-out set per task.
"""

from __future__ import annotations

import math

import torch

from warpgrad.tasks.base import Task


def sine_task(
    generator: torch.Generator,
    *,
    shots: int = 10,
    test_shots: int = 100,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
    device: torch.device | str | None = None,
) -> Task:
    """One sine task: ``x_train [shots, 1]``, ``y_train [shots, 1]``, ``x_test
    [test_shots, 1]``, ``y_test [test_shots, 1]``; full-batch adaptation; meta-objectives use
    the held-out points (the query set)."""
    if shots < 1 or test_shots < 1:
        raise ValueError(f"shots and test_shots must be positive, got {shots}, {test_shots}")
    a = uniform(generator, *amplitude, 1)
    b = uniform(generator, *phase, 1)
    x = uniform(generator, *x_range, shots + test_shots).unsqueeze(1)
    y = a * torch.sin(x - b)
    x, y = x.to(device), y.to(device)
    return Task(x[:shots], y[:shots], x[shots:], y[shots:])


def sine_tasks(n: int, generator: torch.Generator, **kwargs) -> list[Task]:
    """``n`` independent :func:`sine_task` s."""
    return [sine_task(generator, **kwargs) for _ in range(n)]


def uniform(generator: torch.Generator, low: float, high: float, n: int) -> torch.Tensor:
    """``[n]`` draws from U[low, high) (float32, CPU) from ``generator``."""
    return low + (high - low) * torch.rand(n, generator=generator)
