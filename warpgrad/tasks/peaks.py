"""Random variants of MATLAB's ``peaks`` surface: the tasks of WarpGrad's geometry toy
problem (the paper's appendix D).

MATLAB's surface over a point x = (x1, x2) is

    peaks(x) = 3 (1 - x1)² exp(-x1² - (x2 + 1)²)
               - 10 (x1/5 - x1³ - x2⁵) exp(-x1² - x2²)
               - 1/3 exp(-(x1 + 1)² - x2²)

The family writes each term with a weight b_i and an offset a_i, from a coefficient vector
``c = (b1, b2, b3, a1, a2, a3)``:

    T1 = b1 (1 - x1)² exp(-x1² - (x2 + a1)²)
    T2 = -b2 (v/5 - v³ - x2⁵) exp(-v² - x2²),   v = x1 + a2  (the whole term shifted)
    T3 = -b3 exp(-(x1 + a3)² - x2²)             (surface "peaks")
    T3 = -b3 exp(-(x1 + a3)² - x1²)             (surface "appendix")

``c = PEAKS_COEFFICIENTS = (3, 10, 1/3, 1, 0, 1)`` is MATLAB's surface. The paper does not
give the ranges its tasks are drawn from; :func:`sample_coefficients` draws the weights
b_i = b_i⁰ · U[1 - s_b, 1 + s_b] and the offsets a_i = a_i⁰ + U[-s_a, s_a] around those
values (the library's choice). The appendix prints the third term with x1 in both slots;
MATLAB's surface and the paper's figures have x2 in the second one, and the printed form
makes that term a function of x1 alone (a ridge along x2 instead of a dip), so
``"peaks"`` is the default and ``"appendix"`` the literal reading.

A library task (:func:`peaks_task`) is one surface and one starting point: its inputs
``x`` are the start ``[1, 2]``, its targets the coefficients ``[1, 6]``, so that a model maps
(start, θ) to a point and :func:`peaks_loss` scores the point on the task's own surface.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from warpgrad.tasks.base import Task

PEAKS_COEFFICIENTS: tuple[float, ...] = (3.0, 10.0, 1.0 / 3.0, 1.0, 0.0, 1.0)
"""``(b1, b2, b3, a1, a2, a3)`` of MATLAB's ``peaks``."""

SURFACES: tuple[str, ...] = ("peaks", "appendix")
"""The third term's form: MATLAB's (x2 in its second slot) or the appendix's as printed."""


def _check_surface(surface: str) -> None:
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {list(SURFACES)}, got {surface!r}")


def peaks_terms(x: Tensor, coefficients: Tensor | None = None, surface: str = "peaks"
                ) -> tuple[Tensor, Tensor, Tensor]:
    """The three terms T1, T2, T3 at points ``x`` ``[..., 2]`` of the surfaces
    ``coefficients`` ``[..., 6]`` (broadcast against ``x``'s leading dimensions; default
    MATLAB's), each ``[...]``; their sum is :func:`peaks`."""
    _check_surface(surface)
    if coefficients is None:
        coefficients = x.new_tensor(PEAKS_COEFFICIENTS)
    b1, b2, b3, a1, a2, a3 = coefficients.unbind(-1)
    x1, x2 = x.unbind(-1)
    t1 = b1 * (1 - x1) ** 2 * torch.exp(-x1 ** 2 - (x2 + a1) ** 2)
    v = x1 + a2
    t2 = -b2 * (v / 5 - v ** 3 - x2 ** 5) * torch.exp(-v ** 2 - x2 ** 2)
    second = x2 if surface == "peaks" else x1
    t3 = -b3 * torch.exp(-(x1 + a3) ** 2 - second ** 2)
    return t1, t2, t3


def peaks(x: Tensor, coefficients: Tensor | None = None, surface: str = "peaks") -> Tensor:
    """The surface's height at points ``x`` ``[..., 2]``: ``[...]`` (see the module
    docstring; ``coefficients`` ``[..., 6]`` broadcast, default MATLAB's)."""
    t1, t2, t3 = peaks_terms(x, coefficients, surface)
    return t1 + t2 + t3


def sample_coefficients(n: int, generator: torch.Generator, *, coefficient_spread: float = 0.5,
                        offset_spread: float = 0.5) -> Tensor:
    """``n`` random surfaces ``[n, 6]``: weights b_i⁰ · U[1 - coefficient_spread,
    1 + coefficient_spread], offsets a_i⁰ + U[-offset_spread, offset_spread] around
    :data:`PEAKS_COEFFICIENTS` (float32)."""
    if coefficient_spread < 0 or offset_spread < 0:
        raise ValueError(f"coefficient_spread and offset_spread must be non-negative, got "
                         f"{coefficient_spread} and {offset_spread}")
    centre = torch.tensor(PEAKS_COEFFICIENTS)
    noise = 2 * torch.rand(n, 6, generator=generator) - 1  # U[-1, 1]
    weights = centre[:3] * (1 + coefficient_spread * noise[:, :3])
    offsets = centre[3:] + offset_spread * noise[:, 3:]
    return torch.cat([weights, offsets], dim=1)


def sample_starts(n: int, generator: torch.Generator, low: float = -3.0, high: float = 3.0
                  ) -> Tensor:
    """``n`` starting points ``[n, 2]`` uniform on the square [low, high]²."""
    if not low < high:
        raise ValueError(f"the start range needs low < high, got [{low}, {high}]")
    return low + (high - low) * torch.rand(n, 2, generator=generator)


def peaks_task(start: Tensor, coefficients: Tensor) -> Task:
    """One library task: the surface ``coefficients`` ``[6]`` from the start ``[2]``
    (inputs ``[1, 2]``, targets ``[1, 6]``; the same single example adapts and scores, the
    surface being known exactly)."""
    x, y = start.reshape(1, 2), coefficients.reshape(1, 6)
    return Task(x, y, x, y)


def peaks_loss(surface: str = "peaks") -> Callable[[Tensor, Tensor], Tensor]:
    """``(points [N, 2], coefficients [N, 6]) -> mean height`` on ``surface``: the loss
    function of :func:`peaks_task` tasks."""
    _check_surface(surface)

    def loss(points: Tensor, coefficients: Tensor) -> Tensor:
        return peaks(points, coefficients, surface).mean()

    return loss
