"""Batched, seeded image augmentation (class-preserving), as tensor operations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RandomAffine", "affine_theta", "warp_affine"]


def affine_theta(
    angle: Tensor, scale: Tensor, shift_x: Tensor, shift_y: Tensor,
    shear: Tensor | None = None, size: tuple[int, int] = (1, 1),
) -> Tensor:
    """``theta [B, 2, 3]`` for :func:`torch.nn.functional.affine_grid`.

    The forward map (image -> output) rotates by ``angle`` (radians, counter-clockwise on
    screen), shears x by ``shear * y``, scales by ``scale`` about the centre, then shifts by
    ``(shift_x, shift_y)`` in fractions of the width/height. ``size`` is ``(H, W)``, so that
    rotations stay rotations on non-square images. All inputs are ``[B]``.
    """
    h, w = size
    cos, sin = torch.cos(angle), torch.sin(angle)
    sh = torch.zeros_like(angle) if shear is None else shear
    # forward linear map in pixel units: A = R(angle) @ Shear @ scale (y axis points down,
    # so a positive angle turns the image counter-clockwise on screen)
    a11 = scale * cos
    a12 = scale * (cos * sh + sin)
    a21 = scale * (-sin)
    a22 = scale * (-sin * sh + cos)
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    # to normalised coordinates: x_n = x_p / (w/2), y_n = y_p / (h/2)
    r = h / w
    n11, n12, n21, n22 = i11, i12 * r, i21 / r, i22
    tx, ty = 2 * shift_x, 2 * shift_y
    theta = torch.stack([
        torch.stack([n11, n12, -(n11 * tx + n12 * ty)], -1),
        torch.stack([n21, n22, -(n21 * tx + n22 * ty)], -1),
    ], 1)
    return theta


def warp_affine(x: Tensor, theta: Tensor, displacement: Tensor | None = None) -> Tensor:
    """Resample float images ``x [B, C, H, W]`` through ``theta [B, 2, 3]`` (zeros outside).

    ``displacement`` (optional, ``[B, H, W, 2]`` in normalised units) is added to the sampling
    grid, e.g. a smooth random field for an elastic warp.
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(grid.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RandomAffine:
    """Random rotation, translation and scaling of a batch, one draw per image.

    The torchvision ``RandomAffine(degrees, translate, scale)`` the Leap/WarpGrad Omniglot
    protocol uses (defaults: rotation 0-360 degrees, shift up to 20% of the size, scale
    0.8-1.2), as one :func:`~torch.nn.functional.grid_sample` call on the batch. Areas
    outside the source image are filled with 0 (background of the stroke-is-1 images).

    Call as ``aug(x, generator)`` with float ``x [B, C, H, W]``; returns the same shape on the
    same device. Parameters are drawn on the generator's device from ``generator`` (the
    global RNG if ``None``), so equal seeds give equal batches.
    """

    def __init__(
        self,
        degrees: tuple[float, float] | float = (0.0, 360.0),
        translate: float = 0.2,
        scale: tuple[float, float] = (0.8, 1.2),
        shear: float = 0.0,
    ) -> None:
        if isinstance(degrees, (int, float)):
            degrees = (-float(degrees), float(degrees))
        self.degrees = (float(degrees[0]), float(degrees[1]))
        self.translate = float(translate)
        self.scale = (float(scale[0]), float(scale[1]))
        self.shear = float(shear)

    def __repr__(self) -> str:
        return (f"RandomAffine(degrees={self.degrees}, translate={self.translate}, "
                f"scale={self.scale}, shear={self.shear})")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(x)
        return self.apply(x, self.sample(x.shape[0], generator))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The random draw of ``n`` images' transforms: ``[n, 5]`` float64 uniforms on the
        generator's device (what ``aug(x, generator)`` draws for ``x`` of ``n`` images)."""
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.rand(n, 5, generator=generator, device=device, dtype=torch.float64)

    def apply(self, x: Tensor, u: Tensor) -> Tensor:
        """Transform ``x [B, C, H, W]`` by the draws ``u [B, 5]`` of :meth:`sample`."""
        _check_images(x)
        lo, hi = self.degrees
        angle = (lo + (hi - lo) * u[:, 0]) * (math.pi / 180.0)
        shift_x = (2 * u[:, 1] - 1) * self.translate
        shift_y = (2 * u[:, 2] - 1) * self.translate
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 3]
        shear = (2 * u[:, 4] - 1) * self.shear
        theta = affine_theta(angle, scale, shift_x, shift_y, shear, size=tuple(x.shape[-2:]))
        return warp_affine(x, theta.to(x.device, x.dtype))


def _check_images(x: Tensor) -> None:
    if not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"RandomAffine needs float [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
