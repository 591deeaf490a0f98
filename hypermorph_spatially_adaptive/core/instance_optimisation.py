"""Instance optimisation: the velocity of one pair optimised on the training objective itself.

:func:`optimise_velocity` minimises, by Adam on the stationary velocity ``v`` ``[B, ndim, *S]`` (voxels), exactly
the elastic training objective (:func:`.objective.loss_terms` with the elastic regularizer):

    ``mean((1 - lam(x) - mu(x)) * (1 - cc(x))) + mean(lam/2 (div v)^2 + mu/4 sum_ij (d_i v_j + d_j v_i)^2)``

with ``warped = moving(x + exp(v)(x))`` (scaling and squaring, :func:`.transform.integrate_velocity`), voxelwise
Lame maps ``lam(x)``, ``mu(x)`` ``[B, 1, *S]`` (the global pair everywhere, or per-class values through the fixed
labels: :func:`.regularizers.lame_maps`) and spacing in mm. It starts from a given velocity (a network's prediction)
or from zero (a classical registration).

Coarse to fine: ``levels`` lists downsampling factors, e.g. ``(4, 2, 1)``. At a level of factor f the images and
the Lame maps are averaged onto a grid of ``ceil(n / f)`` voxels per axis (spacing ``spacing * n / m``, so the
energy stays per mm), and the objective is the same function on that grid; ``steps`` Adam steps run at every
level. What a level adds to the start is carried to the next one (:func:`resample_velocity`, which keeps a field's
millimetres: voxel components are scaled by the grid ratio), so a network's fine detail is kept and the coarse
levels correct its large-scale error. The last level must be 1 (the full grid).

No random draws: the result is a function of the inputs (on the CPU bitwise reproducible for a thread count; on
CUDA ``grid_sample``'s backward accumulates atomically, so the last digits may differ between runs).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .objective import loss_terms
from .tensors import as_voxelwise, check_field, check_image, check_spacing
from .transform import integrate_velocity, warp

__all__ = ["InstanceResult", "optimise_velocity", "level_shape", "resample_velocity", "downsample", "check_levels"]


@dataclass(frozen=True)
class InstanceResult:
    """What :func:`optimise_velocity` returns: the optimised ``velocity`` and its ``displacement = exp(v)``
    ``[B, ndim, *S]`` (voxels, full grid), the ``warped`` moving image ``[B, 1, *S]``, the objective after each
    step (``objective[i]``: the total of :func:`.objective.loss_terms` on that level's grid, before step
    i's update; levels in order), the shape of each level's
    grid and the seconds spent (CUDA synchronised)."""

    velocity: torch.Tensor
    displacement: torch.Tensor
    warped: torch.Tensor
    objective: list[float]
    level_shapes: list[tuple[int, ...]]
    seconds: float


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """``levels`` as a tuple of positive ints, decreasing, ending at 1; ValueError naming them otherwise."""
    values = tuple(levels)
    if not values or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in values) \
            or values[-1] != 1 or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"levels must be decreasing positive ints ending at 1 (downsampling factors, e.g. 4 2 1), "
                         f"got {list(values)}")
    return values


def level_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """The grid of a level: ``ceil(n / factor)`` voxels per axis, at least 2 (a difference needs two voxels)."""
    return tuple(max(min(2, n), math.ceil(n / factor)) for n in shape)


def downsample(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Average ``x`` ``[B, C, *S]`` onto a grid of ``shape`` (area weights; the identity for the same shape)."""
    shape = tuple(shape)
    return x if tuple(x.shape[2:]) == shape else F.interpolate(x, size=shape, mode="area")


def resample_velocity(velocity: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A field ``[B, ndim, *S]`` (voxels) on a grid of ``shape`` covering the same extent, still in voxels of the
    new grid: interpolated (linear upwards, area average downwards; cell-centred, ``align_corners=False``) and
    component k scaled by ``shape[k] / S[k]``, so that its millimetres are kept (a constant field stays the
    same in mm)."""
    shape = tuple(shape)
    source = tuple(velocity.shape[2:])
    if source == shape:
        return velocity
    if all(m <= n for m, n in zip(shape, source)):
        field = F.interpolate(velocity, size=shape, mode="area")
    else:
        field = F.interpolate(velocity, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear",
                              align_corners=False)
    scale = torch.tensor([m / n for m, n in zip(shape, source)], dtype=field.dtype, device=field.device)
    return field * scale.view(1, -1, *([1] * len(shape)))


def _on_grid(parameter: torch.Tensor | float, shape: tuple[int, ...]) -> torch.Tensor | float:
    """A parameter from :func:`.tensors.as_voxelwise` on a level's grid: maps are averaged, per-sample values
    ``[B, 1, 1, ...]`` become ``[B]``, floats are kept."""
    if not isinstance(parameter, torch.Tensor):
        return parameter
    return downsample(parameter, shape) if any(n > 1 for n in parameter.shape[2:]) else parameter.reshape(-1)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimise_velocity(fixed: torch.Tensor, moving: torch.Tensor, lam, mu, *,
                      spacing: Sequence[float] | None = None, velocity: torch.Tensor | None = None,
                      steps: int = 200, lr: float = 0.1, levels: Sequence[int] = (1,), int_steps: int = 7,
                      ncc_window: int = 9, progress: Callable[[int], None] | None = None) -> InstanceResult:
    """Optimise the velocity of a pair on the training objective (see the module docstring).

    fixed, moving ``[B, 1, *S]`` on the same grid (intensities in [0, 1]); ``lam``, ``mu`` floats, per-sample
    ``[B]`` or voxelwise maps ``[B, 1, *S]`` (non-negative, ``lam + mu <= 1`` for a non-negative similarity
    weight); ``spacing`` mm per voxel (None: voxels); ``velocity`` the start ``[B, ndim, *S]`` in voxels (None:
    zero); ``steps`` Adam steps per level (0: the start is integrated as it is); ``lr`` Adam's learning rate in
    voxels of each level's grid; ``levels`` downsampling factors ending at 1; ``int_steps`` squarings (as the
    model's); ``ncc_window`` voxels. ``progress`` is called with the number of steps done after each one.
    """
    ndim = check_image(fixed, "fixed", channels=1)
    check_image(moving, "moving", channels=1)
    if moving.shape != fixed.shape:
        raise ValueError(f"moving must have the shape of fixed {tuple(fixed.shape)}, got {tuple(moving.shape)}")
    spacing = check_spacing(spacing, ndim)
    shape = tuple(fixed.shape[2:])
    field_shape = (fixed.shape[0], ndim, *shape)
    if velocity is None:
        velocity = fixed.new_zeros(field_shape)
    elif tuple(velocity.shape) != field_shape:
        raise ValueError(f"velocity must have shape {list(field_shape)} [B, ndim, *S], got {tuple(velocity.shape)}")
    else:
        check_field(velocity, "velocity")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    levels = check_levels(levels)
    lam_map = as_voxelwise(lam, fixed, "lam")
    mu_map = as_voxelwise(mu, fixed, "mu")
    start = velocity.detach()

    _synchronize(fixed.device)
    started = time.perf_counter()
    objective, shapes = [], []
    carried = None  # what the previous levels added to the start, on the previous level's grid
    done = 0
    for factor in levels:
        grid = level_shape(shape, factor)
        shapes.append(grid)
        level_spacing = tuple(s * n / m for s, n, m in zip(spacing, shape, grid))
        fixed_l, moving_l = downsample(fixed, grid), downsample(moving, grid)
        lam_l, mu_l = _on_grid(lam_map, grid), _on_grid(mu_map, grid)
        base = resample_velocity(start, grid)
        initial = base if carried is None else base + resample_velocity(carried, grid)
        current = initial.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([current], lr=float(lr))
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            warped = warp(moving_l, integrate_velocity(current, int_steps))
            terms = loss_terms(fixed_l, warped, current, "elastic", lam_l, mu_l, spacing=level_spacing,
                               ncc_window=ncc_window, validate=False)
            terms.total.backward()
            optimizer.step()
            objective.append(terms.total.detach())
            done += 1
            if progress is not None:
                progress(done)
        carried = (current - base).detach()
    with torch.no_grad():
        final = start + resample_velocity(carried, shape)
        displacement = integrate_velocity(final, int_steps)
        warped = warp(moving, displacement)
    values = torch.stack(objective).tolist() if objective else []  # one host-device synchronisation
    _synchronize(fixed.device)
    return InstanceResult(final, displacement, warped, values, shapes, time.perf_counter() - started)
