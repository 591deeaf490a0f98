"""Voxel grids, resampling and point maps: the geometry under every dataset item (numpy, always 3 axes).

A :class:`Grid` is a shape and a voxel -> world (mm) affine; a 2D image is the grid ``(H, W, 1)`` whose 4x4
affine covers the third axis. Preprocessing is a change of grid (:func:`slice_grid`, :func:`rescale_grid`,
:func:`crop_grid`) followed by one interpolation per volume (:func:`resample_volume`, and
:func:`resample_displacement` for a displacement field); keypoints go through the same voxel maps
(:func:`map_points`). Voxel coordinates are 0-based and in array order.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "Grid",
    "voxel_spacing",
    "slice_grid",
    "rescale_grid",
    "crop_grid",
    "fit_plane",
    "resample_volume",
    "resample_displacement",
    "map_points",
    "points_inside",
    "drop_axis",
]


class Grid(NamedTuple):
    """A voxel grid: ``shape`` (3 ints; a 2D image is ``(H, W, 1)``) and ``affine`` voxel -> world (mm), 4x4."""

    shape: tuple[int, ...]
    affine: np.ndarray


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each of the 3 array axes (mm): the column norms of the affine's 3x3 part."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _subgrid(grid: Grid, scale: Sequence[float], offset: Sequence[float], shape: Sequence[int]) -> Grid:
    """Grid whose voxel ``x`` lies at voxel ``scale * x + offset`` of ``grid``."""
    step = np.eye(4)
    step[:3, :3] = np.diag(np.asarray(scale, dtype=np.float64))
    step[:3, 3] = np.asarray(offset, dtype=np.float64)
    return Grid(tuple(int(n) for n in shape), np.asarray(grid.affine, dtype=np.float64) @ step)


def slice_grid(grid: Grid, axis: int, index: int) -> Grid:
    """The single slice ``index`` along array ``axis`` of ``grid`` (size 1 along that axis)."""
    if not 0 <= index < grid.shape[axis]:
        raise ValueError(f"slice_index must lie in [0, {grid.shape[axis] - 1}] along axis {axis} of a grid of "
                         f"shape {tuple(grid.shape)}, got {index}")
    shape, offset = list(grid.shape), [0.0, 0.0, 0.0]
    shape[axis], offset[axis] = 1, float(index)
    return _subgrid(grid, (1.0, 1.0, 1.0), offset, shape)


def rescale_grid(grid: Grid, spacing: Sequence[float]) -> Grid:
    """Grid with voxel size ``spacing`` (mm, 3 values) sharing the first voxel centre with ``grid``.

    Along an axis of ``n`` voxels of size ``s`` the new grid has ``floor((n - 1) s / t) + 1`` voxels of size ``t``,
    the most that keep every voxel centre inside the old extent; new voxel ``j`` sits at old voxel ``j t / s``.
    """
    target = np.asarray(spacing, dtype=np.float64)
    if target.shape != (3,) or not np.all(target > 0) or not np.all(np.isfinite(target)):
        raise ValueError(f"spacing must be 3 finite positive values (mm), got {tuple(np.ravel(target))}")
    scale = target / voxel_spacing(grid.affine)
    shape = [int(math.floor((n - 1) / s + 1e-6)) + 1 for n, s in zip(grid.shape, scale)]
    return _subgrid(grid, scale, (0.0, 0.0, 0.0), shape)


def crop_grid(grid: Grid, shape: Sequence[int], center: Sequence[float] | None = None) -> Grid:
    """Window of ``shape`` voxels (3 ints) of ``grid``, centred on ``center`` (voxel coords; default the middle).

    The window starts at voxel ``floor(center - (shape - 1) / 2 + 0.5)`` along each axis: a crop where it is
    smaller than the grid, a padding where it reaches outside (padded voxels read as background).
    """
    size = np.asarray(shape)
    if size.shape != (3,) or not np.all(size >= 1):
        raise ValueError(f"shape must be 3 positive integers, got {tuple(np.ravel(size))}")
    middle = (np.asarray(grid.shape, dtype=np.float64) - 1.0) / 2.0
    centre = middle if center is None else np.asarray(center, dtype=np.float64)
    offset = np.floor(centre - (size - 1) / 2.0 + 0.5)
    return _subgrid(grid, (1.0, 1.0, 1.0), offset, size)


def fit_plane(grid: Grid, plane: Sequence[int], spacing: Sequence[float] | None,
              shape: Sequence[int] | None) -> Grid:
    """``grid`` with voxel size ``spacing`` (mm, :func:`rescale_grid`) and then ``shape`` voxels (:func:`crop_grid`)
    along the array axes ``plane`` (2 axes in 2D mode, all 3 in 3D); None leaves that step out. An axis outside
    ``plane`` (the slice axis) keeps its spacing and size."""
    plane = list(plane)
    if spacing is not None:
        target = voxel_spacing(grid.affine)
        target[plane] = spacing
        grid = rescale_grid(grid, target)
    if shape is not None:
        size = list(grid.shape)
        for axis, n in zip(plane, shape):
            size[axis] = n
        grid = crop_grid(grid, size)
    return grid


def _crop_pad(array: np.ndarray, offset: Sequence[int], shape: Sequence[int], cval: float) -> np.ndarray:
    """Exact window ``array[offset : offset + shape]`` with ``cval`` outside the array."""
    if not any(offset) and tuple(shape) == array.shape:
        return array  # the common case (no crop, no resampling): no copy
    out = np.full(tuple(shape), cval, dtype=array.dtype)
    source, target = [], []
    for start, size_in, size_out in zip(offset, array.shape, shape):
        lo, hi = max(start, 0), min(start + size_out, size_in)
        if hi <= lo:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[tuple(target)] = array[tuple(source)]
    return out


def _voxel_map(affine: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Linear part and offset of the map grid voxel -> voxel of the image with ``affine``."""
    mapping = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ grid.affine
    linear = mapping[:3, :3].copy()
    linear[np.abs(linear) < 1e-9] = 0.0  # round-off from inv(A) @ A must not force the general path
    return linear, mapping[:3, 3].copy()


def resample_volume(array: np.ndarray, affine: np.ndarray, grid: Grid, order: int = 1,
                    cval: float = 0.0) -> np.ndarray:
    """Sample a 3-axis ``array`` with voxel -> world ``affine`` on ``grid``; returns an array of ``grid.shape``.

    ``order`` 1 is trilinear (images), 0 nearest (labels, masks). Outside the array reads ``cval``; within the
    outer half voxel of the extent, nearest keeps the edge voxel and linear blends it with ``cval``, so round-off
    at the edge never blanks a border voxel. Integer shifts (crop, pad, slice) are exact copies. The dtype is kept.
    """
    if array.ndim != 3:
        raise ValueError(f"array must have 3 axes (a 2D image as [H, W, 1]), got shape {array.shape}")
    linear, offset = _voxel_map(affine, grid)
    # Affines stored as float32 differ in the 7th digit: such near-identities are exact copies, not interpolations.
    if np.allclose(linear, np.eye(3), rtol=0, atol=1e-6) and np.allclose(offset, np.round(offset), rtol=0, atol=1e-4):
        return _crop_pad(array, np.round(offset).astype(int), grid.shape, cval)
    options = dict(offset=offset, output_shape=tuple(grid.shape), order=order, mode="grid-constant", cval=cval,
                   prefilter=False, output=array.dtype)
    if np.count_nonzero(linear - np.diag(np.diag(linear))) == 0:
        return ndimage.affine_transform(array, np.diag(linear), **options)
    return ndimage.affine_transform(array, linear, **options)


def resample_displacement(field: np.ndarray, affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Carry a displacement ``[3, *S]`` (voxels of the grid with ``affine``) onto ``grid``: ``[3, *grid.shape]``.

    With ``x_old = L x_new + o`` the field becomes ``u_new(x) = L^-1 u_old(L x + o)`` (voxels of ``grid``), which
    keeps ``moving(x + u(x)) = fixed(x)`` when both images are resampled on ``grid``. Outside reads 0.
    """
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"field must have shape [3, *S], got {field.shape}")
    linear, _ = _voxel_map(affine, grid)
    parts = np.stack([resample_volume(np.ascontiguousarray(c), affine, grid, order=1) for c in field])
    return np.einsum("ij,j...->i...", np.linalg.inv(linear), parts).astype(field.dtype)


def map_points(points: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates ``[N, 3]`` of a grid with ``source_affine`` -> those of a grid with ``target_affine``."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {points.shape}")
    mapping = np.linalg.inv(np.asarray(target_affine, dtype=np.float64)) @ np.asarray(source_affine, np.float64)
    return points @ mapping[:3, :3].T + mapping[:3, 3]


def points_inside(points: np.ndarray, shape: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """Rows of ``points`` ``[N, 3]`` within the voxel extent ``[-0.5, n - 0.5)`` along ``axes``."""
    keep = np.ones(len(points), dtype=bool)
    for axis in axes:
        keep &= (points[:, axis] >= -0.5) & (points[:, axis] < shape[axis] - 0.5)
    return keep


def drop_axis(grid: Grid, axis: int | None) -> tuple[np.ndarray, list[int]]:
    """Affine of the output and its spatial axes: for a 2D output the slice axis becomes the third column.

    ``axis`` is the array axis that a 2D output drops (``None`` for 3D); returns the ``[4, 4]`` affine and the
    array axes ``grid`` keeps, in order.
    """
    if axis is None:
        return grid.affine, [0, 1, 2]
    plane = [a for a in range(3) if a != axis]
    return grid.affine[:, plane + [axis, 3]], plane
