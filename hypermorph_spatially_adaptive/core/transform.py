"""Spatial transforms: warping, scaling-and-squaring integration, composition.

Fields are ``[B, ndim, *S]`` in voxels, channel k along array axis k, defined on the fixed grid and pointing
into the moving image: ``warp(moving, u)(x) = moving(x + u(x))``. Only this module converts to
``grid_sample``'s normalised coordinates (last axis first, range [-1, 1], ``align_corners=True``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["identity_grid", "warp", "sample_at_points", "integrate_velocity", "compose", "SpatialTransformer", "VecInt"]


def identity_grid(shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of a grid of ``shape`` as a field ``[1, ndim, *shape]`` (channel k = index along axis k)."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def _normalisers(shape: tuple[int, ...]) -> list[float]:
    """Per axis the factor from voxels to grid_sample's [-1, 1] (``align_corners=True``): ``2 / (n - 1)``. A size-1
    axis has no extent: it maps to the centre rather than dividing by zero. Python floats, so that no tensor is
    copied to the device (a synchronisation on a GPU) on every warp."""
    return [2.0 / (n - 1) if n > 1 else 0.0 for n in shape]


def _sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """Field in voxels ``[B, ndim, *S]`` -> grid_sample grid ``[B, *S, ndim]`` (normalised, axes reversed)."""
    shape = tuple(displacement.shape[2:])
    coords = identity_grid(shape, displacement.device, displacement.dtype) + displacement
    scale = _normalisers(shape)
    return torch.stack([coords[:, k] * scale[k] - 1.0 for k in reversed(range(len(shape)))], dim=-1)


def warp(image: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Resample ``image`` ``[B, C, *S]`` at ``x + displacement(x)``; displacement ``[B, ndim, *S]`` in voxels.

    ``mode`` is ``"bilinear"`` (linear in 3D too) or ``"nearest"`` (for label maps); values outside the image
    take the border value by default. A batch-1 image is broadcast against a batch-B displacement.
    """
    if displacement.shape[2:] != image.shape[2:]:
        raise ValueError(f"displacement spatial shape {tuple(displacement.shape[2:])} must match "
                         f"image spatial shape {tuple(image.shape[2:])}")
    if displacement.shape[1] != image.dim() - 2:
        raise ValueError(f"displacement must have {image.dim() - 2} channels, got shape {tuple(displacement.shape)}")
    if image.shape[0] == 1 and displacement.shape[0] > 1:
        image = image.expand(displacement.shape[0], *image.shape[1:])
    grid = _sampling_grid(displacement.to(image.dtype) if image.is_floating_point() else displacement)
    if not image.is_floating_point():
        out = F.grid_sample(image.to(grid.dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
        return out.round().to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def sample_at_points(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate ``field`` ``[C, *S]`` at voxel coordinates ``points`` ``[N, ndim]``; returns ``[N, C]``.

    Points outside the grid take the border value.
    """
    ndim = points.shape[-1]
    if field.dim() != ndim + 1:
        raise ValueError(f"field must have shape [C, *S] with {ndim} spatial axes to match points [N, {ndim}], "
                         f"got shape {tuple(field.shape)}")
    scale, points = _normalisers(tuple(field.shape[1:])), points.to(field.dtype)
    grid = torch.stack([points[:, k] * scale[k] - 1.0 for k in reversed(range(ndim))], dim=-1)
    grid = grid.view(1, -1, *([1] * (ndim - 1)), ndim)
    values = F.grid_sample(field.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return values.reshape(field.shape[0], -1).T


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement ``exp(v)`` of a stationary velocity field ``[B, ndim, *S]`` (voxels) by scaling and squaring.

    ``steps = 0`` returns the velocity itself (used directly as the displacement).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    displacement = velocity / (2 ** steps)
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement)
    return displacement


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``x -> phi_outer(phi_inner(x))``: ``inner(x) + outer(x + inner(x))`` ``[B, ndim, *S]``."""
    return inner + warp(outer, inner)


class SpatialTransformer(nn.Module):
    """Module form of :func:`warp`."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border"):
        super().__init__()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.mode, self.padding_mode = mode, padding_mode

    def forward(self, image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        return warp(image, displacement, self.mode, self.padding_mode)


class VecInt(nn.Module):
    """Module form of :func:`integrate_velocity` (scaling and squaring with ``steps`` squarings)."""

    def __init__(self, steps: int = 7):
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps = steps

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        return integrate_velocity(velocity, self.steps)
