"""Paired registration datasets: Learn2Reg NLST and Lung CT, ACDC cardiac MR, and the synthetic phantom.

Every dataset is reached through :func:`get_dataset` and yields one dict per image pair:

==================================  ===============================  ==========================================
key                                 dtype, shape                     meaning
==================================  ===============================  ==========================================
``fixed``, ``moving``               float32 ``[1, *S]``              intensities scaled to [0, 1]
``fixed_labels``, ``moving_labels`` int64 ``[1, *S]``                tissue classes ``0..C-1`` (if available)
``fixed_mask``, ``moving_mask``     float32 ``[1, *S]``              0/1 lung or body mask (if available)
``fixed_keypoints``,                float32 ``[N, ndim]``            0-based voxel coordinates on the returned
``moving_keypoints``                                                 grid, array order; row i <-> row i
``gt_displacement``                 float32 ``[ndim, *S]``           phantom only: true displacement (voxels)
``spacing``                         float64 ``[ndim]``               voxel size of the returned grid (mm)
``affine``                          float64 ``[4, 4]``               voxel -> world (mm) of the returned fixed grid
``pair_id``                         str                              case id, e.g. ``"0001"`` or ``"patient001"``
==================================  ===============================  ==========================================

Both images of a pair are returned on one grid, derived from the fixed image's grid: the moving image, labels,
mask and keypoints are carried onto it through their own affines (voxel -> world -> voxel), so a fixed keypoint
``p`` corresponds to ``p + u(p)`` for the true displacement ``u`` as in ARCHITECTURE.md.

Preprocessing is a change of grid followed by one interpolation per volume (images linear, labels and masks
nearest); see :func:`rescale_grid` (``spacing=``), :func:`crop_grid` (``shape=``) and :func:`slice_grid` (2D mode).
Keypoints and the phantom's true displacement go through the same voxel maps. Nothing is downloaded: point
``root`` at the folder you unpacked. Files and headers are checked when a dataset is built; voxel data is read
in ``__getitem__`` (optionally cached in memory with ``cache=True``; each DataLoader worker keeps its own cache).
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

__all__ = [
    "get_dataset",
    "available_datasets",
    "collate_pairs",
    "PairDataset",
    "Learn2RegDataset",
    "NLSTDataset",
    "LungCTDataset",
    "PhantomDataset",
    "ACDCDataset",
    "Grid",
    "voxel_spacing",
    "slice_grid",
    "rescale_grid",
    "crop_grid",
    "resample_volume",
    "resample_displacement",
    "map_points",
    "window_ct",
    "robust_minmax",
    "read_keypoints",
]

SPLITS = ("train", "val", "test")
#: CT intensity window (HU) mapped to [0, 1]: air at 0, soft tissue near 0.5, dense bone and metal clipped at 1.
DEFAULT_HU_WINDOW = (-1000.0, 1000.0)
# Affines of an image and its labels/mask must agree to this many mm (NIfTI stores them as float32).
AFFINE_ATOL_MM = 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Functional core: grids, resampling, point maps, intensities (numpy, internally always 3 axes)
# ----------------------------------------------------------------------------------------------------------------

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


def window_ct(image: np.ndarray, window: Sequence[float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """CT intensities (HU) clipped to ``window = (low, high)`` and scaled linearly to [0, 1]; float32."""
    low, high = float(window[0]), float(window[1])
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)


def robust_minmax(image: np.ndarray, percentiles: Sequence[float] = (1.0, 99.0)) -> np.ndarray:
    """MR intensities scaled so the ``percentiles`` (e.g. 1st, 99th) map to 0 and 1, then clipped to [0, 1].

    A flat image (equal percentiles) becomes all zeros. float32.
    """
    low, high = np.percentile(image, [float(percentiles[0]), float(percentiles[1])])
    if high <= low:
        return np.zeros(image.shape, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)


def read_keypoints(path: str | Path, ndim: int) -> np.ndarray:
    """Keypoints ``[N, ndim]`` (float64, 0-based voxel coordinates) from a header-less comma-separated file.

    Every row is a point (there is no header row to skip).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint file not found: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty file is allowed and read as 0 points
        try:
            points = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"keypoint file {path}: expected comma-separated numbers without a header ({error})") \
                from error
    if points.size == 0:
        return np.zeros((0, ndim))
    if points.shape[1] != ndim:
        raise ValueError(f"keypoint file {path}: expected {ndim} columns (one per axis), got {points.shape[1]}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"keypoint file {path}: contains NaN or infinite coordinates")
    return points


def _keypoint_file_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) of a keypoint file without parsing the numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"keypoint file not found: {path}")
    with open(path) as handle:
        rows = [line for line in handle if line.strip()]
    return len(rows), (len(rows[0].split(",")) if rows else 0)


# ----------------------------------------------------------------------------------------------------------------
# NIfTI access
# ----------------------------------------------------------------------------------------------------------------

def _header(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from the NIfTI header only (no voxel data is read)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        image = nib.load(str(path))
    except Exception as error:  # noqa: BLE001 - nibabel raises several types; report them with the file name
        raise ValueError(f"{what} {path}: cannot read the NIfTI header ({error})") from error
    return tuple(int(n) for n in image.shape), np.asarray(image.affine, dtype=np.float64)


def _same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-5, atol=AFFINE_ATOL_MM))


def _check_same_grid(path: Path, header: tuple, reference: Path, ref_header: tuple) -> None:
    """Raise when a labels/mask header does not share its image's shape and affine."""
    if header[0] != ref_header[0]:
        raise ValueError(f"{path}: shape {header[0]} does not match the image {reference} with shape {ref_header[0]}")
    if not _same_affine(header[1], ref_header[1]):
        raise ValueError(f"{path}: affine\n{np.round(header[1], 4)}\ndoes not match the affine of the image "
                         f"{reference}\n{np.round(ref_header[1], 4)}")


def _as3d(array: np.ndarray) -> np.ndarray:
    """C-ordered copy of a loaded array; a 2D array ``[H, W]`` as ``[H, W, 1]`` (its 4x4 affine covers axis 3).

    NIfTI data arrive in Fortran order; reordering once here, on the smallest dtype, is cheaper than later.
    """
    array = np.ascontiguousarray(array)
    return array[..., None] if array.ndim == 2 else array


def _load_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return _as3d(np.asarray(image.get_fdata(dtype=np.float32))), np.asarray(image.affine, dtype=np.float64)


def _load_labels(path: Path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer label map (int64, 3 axes) and affine; values must be whole numbers in ``0..num_classes-1``."""
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ValueError(f"label file {path}: values must be whole numbers")
    data = _as3d(data).astype(np.int64)
    if num_classes is not None and data.size and (data.min() < 0 or data.max() >= num_classes):
        raise ValueError(f"label file {path}: values must lie in 0..{num_classes - 1} ({num_classes} classes), "
                         f"found {sorted(np.unique(data).tolist())[:12]}")
    return data, np.asarray(image.affine, dtype=np.float64)


def _load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return _as3d(np.asanyarray(image.dataobj)).astype(bool).astype(np.uint8), np.asarray(image.affine, np.float64)


def _check_tuple(value: Any, length: int, name: str, kind: type) -> tuple | None:
    """``None`` or a tuple of ``length`` positive numbers of ``kind``; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, (np.ndarray, torch.Tensor)):
        value = np.asarray(value).ravel().tolist()
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    ok = len(values) == length and all(isinstance(v, (int, float, np.integer, np.floating)) and v > 0
                                       and math.isfinite(v) for v in values)
    if kind is int:
        ok = ok and all(float(v) == int(v) for v in values)
    if not ok:
        what = "integers" if kind is int else "numbers (mm)"
        raise ValueError(f"{name} must be {length} positive {what}, one per axis, got {value!r}")
    return tuple(kind(v) for v in values)


# ----------------------------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------------------------

class PairDataset(Dataset):
    """Common machinery: pair list, ``pairs=`` restriction, optional cache, ``describe()``.

    Subclasses fill ``self._pairs`` (records with a ``pair_id``) and implement ``_load(record) -> dict``.
    """

    name = "pairs"

    def __init__(self, root: str | Path, split: str, cache: bool) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name} dataset folder not found: {self.root}")
        self.split = split
        self.cache = bool(cache)
        self._cache: dict[int, dict[str, Any]] = {}
        self._pairs: list = []
        self.class_names: tuple[str, ...] = ("background",)
        self.ndim = 3
        self.options: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pair_ids(self) -> list[str]:
        return [record.pair_id for record in self._pairs]

    def _restrict(self, pairs: Sequence[str] | None, source: Path) -> None:
        """Keep only the pairs whose id is in ``pairs``; fail on unknown ids or an empty split."""
        if pairs is not None:
            if isinstance(pairs, str):
                pairs = [pairs]
            known = set(self.pair_ids)
            unknown = [p for p in pairs if str(p) not in known]
            if unknown:
                raise ValueError(f"pairs: unknown pair ids {unknown} for split {self.split!r} of {source}; "
                                 f"available: {self.pair_ids}")
            wanted = {str(p) for p in pairs}
            self._pairs = [record for record in self._pairs if record.pair_id in wanted]
        if not self._pairs:
            raise ValueError(f"split {self.split!r} of {self.name} ({source}) has no pairs")

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        index %= len(self)
        if index in self._cache:
            return dict(self._cache[index])
        item = self._load(self._pairs[index])
        if self.cache:
            self._cache[index] = item
            return dict(item)
        return item

    def _load(self, record: Any) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        """Name, root, split, size, dimension, classes, options and the class documentation."""
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        doc = inspect.cleandoc(type(self).__doc__ or "")
        return (f"{self.name} dataset at {self.root}, split {self.split!r}: {len(self)} pairs, {self.ndim}D, "
                f"{self.num_classes} classes {self.class_names}\noptions: {options}\n\n{doc}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, pairs={len(self)})"


def _tensor_item(fixed, moving, spacing, affine, pair_id, fixed_labels=None, moving_labels=None,
                 fixed_mask=None, moving_mask=None, fixed_keypoints=None, moving_keypoints=None,
                 gt_displacement=None) -> dict[str, Any]:
    """Assemble an item dict with the contract's dtypes; arrays are the spatial arrays ``[*S]``."""
    def image(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)[None])

    item: dict[str, Any] = {"fixed": image(fixed), "moving": image(moving)}
    if fixed_labels is not None and moving_labels is not None:
        item["fixed_labels"] = torch.from_numpy(np.ascontiguousarray(fixed_labels, dtype=np.int64)[None])
        item["moving_labels"] = torch.from_numpy(np.ascontiguousarray(moving_labels, dtype=np.int64)[None])
    if fixed_mask is not None and moving_mask is not None:
        item["fixed_mask"], item["moving_mask"] = image(fixed_mask), image(moving_mask)
    if fixed_keypoints is not None and moving_keypoints is not None:
        item["fixed_keypoints"] = torch.from_numpy(np.ascontiguousarray(fixed_keypoints, dtype=np.float32))
        item["moving_keypoints"] = torch.from_numpy(np.ascontiguousarray(moving_keypoints, dtype=np.float32))
    if gt_displacement is not None:
        item["gt_displacement"] = torch.from_numpy(np.ascontiguousarray(gt_displacement, dtype=np.float32))
    item["spacing"] = torch.tensor(np.asarray(spacing, dtype=np.float64))
    item["affine"] = torch.from_numpy(np.ascontiguousarray(affine, dtype=np.float64))
    item["pair_id"] = pair_id
    return item


def _inside(points: np.ndarray, shape: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """Rows of ``points`` ``[N, 3]`` within the voxel extent ``[-0.5, n - 0.5)`` along ``axes``."""
    keep = np.ones(len(points), dtype=bool)
    for axis in axes:
        keep &= (points[:, axis] >= -0.5) & (points[:, axis] < shape[axis] - 0.5)
    return keep


def _drop_axis(grid: Grid, axis: int | None) -> tuple[np.ndarray, list[int]]:
    """Affine of the output and its spatial axes: for a 2D output the slice axis becomes the third column."""
    if axis is None:
        return grid.affine, [0, 1, 2]
    plane = [a for a in range(3) if a != axis]
    return grid.affine[:, plane + [axis, 3]], plane


# ----------------------------------------------------------------------------------------------------------------
# Learn2Reg layout: NLST, Lung CT, phantom
# ----------------------------------------------------------------------------------------------------------------

_CASE_NAME = re.compile(r"^(?P<prefix>.+)_(?P<case>\d+)_(?P<index>\d+)\.nii(\.gz)?$")
_ORIENTATION_AXES = {"coronal": ("A", "P"), "axial": ("S", "I"), "sagittal": ("L", "R")}


@dataclass
class _L2RPair:
    pair_id: str
    fixed: Path
    moving: Path
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    fixed_labels: Path | None = None
    moving_labels: Path | None = None
    fixed_keypoints: Path | None = None
    moving_keypoints: Path | None = None
    displacement: Path | None = None
    file_ndim: int = 3
    slice_axis: int | None = None  # array axis removed in the 2D output; None for a 3D output


def _sibling(image: Path, kind: str, suffix: str | None = None) -> Path:
    """``ROOT/imagesTr/X.nii.gz`` -> ``ROOT/<kind>Tr/X<suffix>`` (``Ts`` folders alike)."""
    folder = image.parent.name
    tail = folder[len("images"):] if folder.startswith("images") else "Tr"
    name = image.name if suffix is None else re.sub(r"\.nii(\.gz)?$", suffix, image.name)
    return image.parent.parent / f"{kind}{tail}" / name


class Learn2RegDataset(PairDataset):
    """Reader of the Learn2Reg paired layout shared by NLST, Lung CT and the phantom (see the subclasses).

    ``ROOT/<PREFIX>_dataset.json`` lists the pairs (``training_paired_images``, ``registration_val``,
    ``registration_test``: ``{"fixed": "./imagesTr/<PREFIX>_XXXX_0000.nii.gz", "moving": ...}``); masks,
    keypoints (header-less CSV, 0-based voxel coordinates) and labels sit in sibling folders with the same
    file names. The lists are trusted, the stated counts are not; the train split drops every pair that is
    also listed for validation or test.
    """

    prefix = ""
    json_name = ""
    has_displacement = False

    def __init__(self, root: str | Path, split: str = "train", *, ndim: int | None = None,
                 spacing: Sequence[float] | None = None, shape: Sequence[int] | None = None,
                 hu_window: Sequence[float] = DEFAULT_HU_WINDOW, mask_images: bool = False,
                 labels_dir: str | Path | None = None, class_names: Sequence[str] | None = None,
                 slice_axis: str | int = "coronal", slice_index: int | None = None,
                 pairs: Sequence[str] | None = None, cache: bool = False) -> None:
        super().__init__(root, split, cache)
        self.json_path = self.root / self.json_name
        if not self.json_path.is_file():
            raise FileNotFoundError(f"{self.name} dataset description not found: {self.json_path}")
        try:
            self.description = json.loads(self.json_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.json_path}: not valid JSON ({error})") from error
        if not isinstance(self.description, dict):
            raise ValueError(f"{self.json_path}: expected a JSON object with the pair lists")
        file_ndim = self._file_ndim()
        if ndim is not None and ndim not in (2, 3):
            raise ValueError(f"ndim must be 2, 3 or None (the data's own {file_ndim}), got {ndim!r}")
        if ndim == 3 and file_ndim == 2:
            raise ValueError(f"ndim=3 was requested but {self.name} at {self.root} holds 2D images")
        self.ndim = file_ndim if ndim is None else int(ndim)
        self.spacing = _check_tuple(spacing, self.ndim, "spacing", float)
        self.shape = _check_tuple(shape, self.ndim, "shape", int)
        try:
            low, high = (float(v) for v in hu_window)
        except (TypeError, ValueError):
            low = high = float("nan")
        if not low < high:
            raise ValueError(f"hu_window must be (low, high) HU with low < high, got {hu_window!r}")
        self.hu_window = (low, high)
        self.mask_images = bool(mask_images)
        if not (slice_axis in _ORIENTATION_AXES or (isinstance(slice_axis, (int, np.integer))
                                                    and 0 <= int(slice_axis) <= 2)):
            raise ValueError(f"slice_axis must be one of {tuple(_ORIENTATION_AXES)} or an array axis 0..2, "
                             f"got {slice_axis!r}")
        if slice_index is not None and (not isinstance(slice_index, (int, np.integer)) or slice_index < 0
                                        or not (self.ndim == 2 and file_ndim == 3)):
            raise ValueError(f"slice_index must be None or a non-negative integer, and only applies to the 2D mode "
                             f"(ndim=2) of 3D data; got {slice_index!r} with ndim={self.ndim}, files {file_ndim}D")
        self.slice_axis, self.slice_index = slice_axis, slice_index
        self.labels_dir = self._labels_dir(labels_dir)
        self.class_names = self._class_names(class_names)
        self.options = dict(ndim=self.ndim, spacing=self.spacing, shape=self.shape, hu_window=self.hu_window,
                            mask_images=self.mask_images, labels_dir=self.labels_dir, slice_axis=slice_axis,
                            slice_index=slice_index, cache=self.cache)
        self._pairs = [self._check_pair(entry, file_ndim) for entry in self._split_entries()]
        self._restrict(pairs, self.json_path)

    # -- dataset-specific hooks --------------------------------------------------------------------------------
    def _file_ndim(self) -> int:
        return 3

    def _labels_dir(self, labels_dir: str | Path | None) -> Path | None:
        if labels_dir is None:
            return None
        path = Path(labels_dir)
        path = path if path.is_absolute() else self.root / path
        if not path.is_dir():
            raise FileNotFoundError(f"labels_dir folder not found: {path}")
        return path

    def _class_names(self, class_names: Sequence[str] | None) -> tuple[str, ...]:
        if self.labels_dir is None:
            if class_names is not None:
                raise ValueError("class_names needs labels_dir (without it the labels are the lung mask: "
                                 "('background', 'lung'))")
            return ("background", "lung")
        names = tuple(class_names) if class_names is not None else ("background", "lung", "bones", "liver")
        if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"class_names must be >= 2 non-empty strings (class 0 first), got {class_names!r}")
        return names

    def _label_path(self, image: Path) -> Path | None:
        return None if self.labels_dir is None else self.labels_dir / image.name

    # -- construction ------------------------------------------------------------------------------------------
    def _entries(self, key: str) -> list[tuple[Path, Path]]:
        entries = self.description.get(key, [])
        if not isinstance(entries, list):
            raise ValueError(f"{self.json_path}: {key!r} must be a list of {{'fixed': ..., 'moving': ...}}")
        pairs = []
        for entry in entries:
            if not isinstance(entry, dict) or "fixed" not in entry or "moving" not in entry:
                raise ValueError(f"{self.json_path}: entries of {key!r} need 'fixed' and 'moving', got {entry!r}")
            pairs.append((Path(os.path.normpath(self.root / entry["fixed"])),
                          Path(os.path.normpath(self.root / entry["moving"]))))
        return pairs

    def _split_entries(self) -> list[tuple[Path, Path]]:
        val, test = self._entries("registration_val"), self._entries("registration_test")
        overlap = set(val) & set(test)
        if overlap:
            raise ValueError(f"{self.json_path}: pairs listed for both validation and test: {sorted(overlap)}")
        if self.split == "val":
            return val
        if self.split == "test":
            if not test:
                raise ValueError(f"split 'test' of {self.name} has no pairs in {self.json_path} "
                                 f"('registration_test' is empty or missing)")
            return test
        held_out = set(val) | set(test)
        return [pair for pair in self._entries("training_paired_images") if pair not in held_out]

    def _check_pair(self, entry: tuple[Path, Path], file_ndim: int) -> _L2RPair:
        """Check files and headers of one pair (no voxel data) and return its record."""
        fixed, moving = entry
        names = [_CASE_NAME.match(p.name) for p in (fixed, moving)]
        for path, match in zip(entry, names):
            if match is None:
                raise ValueError(f"{self.json_path}: image name {path.name} does not follow "
                                 f"{self.prefix}_XXXX_000N.nii.gz")
        cases = (names[0]["case"], names[1]["case"])
        pair_id = cases[0] if cases[0] == cases[1] else f"{cases[0]}_{cases[1]}"
        record = _L2RPair(pair_id, fixed, moving, file_ndim=file_ndim)
        head_f, head_m = _header(fixed, "fixed image"), _header(moving, "moving image")
        for path, head in ((fixed, head_f), (moving, head_m)):
            if len(head[0]) != file_ndim:
                raise ValueError(f"{path}: expected a {file_ndim}D image, header shape {head[0]}")
        # Masks and keypoints are part of the training layout; for test images they are used when present.
        required = self.split != "test"
        for side, path, head in (("fixed", fixed, head_f), ("moving", moving, head_m)):
            mask = _sibling(path, "masks")
            if required or mask.parent.is_dir():
                _check_same_grid(mask, _header(mask, f"{side} mask"), path, head)
                setattr(record, f"{side}_mask", mask)
            labels = self._label_path(path)
            if labels is not None:
                _check_same_grid(labels, _header(labels, f"{side} label map"), path, head)
                setattr(record, f"{side}_labels", labels)
        kp_fixed, kp_moving = _sibling(fixed, "keypoints", ".csv"), _sibling(moving, "keypoints", ".csv")
        if required or kp_fixed.parent.is_dir():
            (rows_f, cols_f), (rows_m, cols_m) = _keypoint_file_shape(kp_fixed), _keypoint_file_shape(kp_moving)
            if rows_f != rows_m:
                raise ValueError(f"keypoint files of pair {pair_id} differ in point count: {kp_fixed} has "
                                 f"{rows_f} rows, {kp_moving} has {rows_m}")
            for path, cols, rows in ((kp_fixed, cols_f, rows_f), (kp_moving, cols_m, rows_m)):
                if rows and cols != file_ndim:
                    raise ValueError(f"keypoint file {path}: expected {file_ndim} columns, got {cols}")
            record.fixed_keypoints, record.moving_keypoints = kp_fixed, kp_moving
        if self.has_displacement:
            self._check_displacement(record, head_f, head_m, cases)
        if self.ndim == 2 and file_ndim == 3:
            record.slice_axis = self._slice_axis(head_f[1])
            if self.slice_index is not None and self.slice_index >= head_f[0][record.slice_axis]:
                raise ValueError(f"slice_index {self.slice_index} is outside {fixed} (size "
                                 f"{head_f[0][record.slice_axis]} along axis {record.slice_axis})")
        elif file_ndim == 2:
            record.slice_axis = 2
        return record

    def _check_displacement(self, record: _L2RPair, head_f: tuple, head_m: tuple, cases: tuple) -> None:
        path = record.fixed.parent.parent / "groundtruthTr" / f"disp_{cases[0]}_{cases[1]}.nii.gz"
        shape, affine = _header(path, "true displacement")
        ndim = record.file_ndim
        if shape not in (head_f[0] + (ndim,), head_f[0] + (1, ndim)) or not _same_affine(affine, head_f[1]):
            raise ValueError(f"{path}: expected shape {head_f[0] + (ndim,)} and the affine of {record.fixed}, got "
                             f"shape {shape}")
        if head_m[0] != head_f[0] or not _same_affine(head_m[1], head_f[1]):
            raise ValueError(f"{record.moving}: the phantom's moving image must share the fixed image's grid "
                             f"(shape {head_f[0]}), got shape {head_m[0]}")
        record.displacement = path

    def _slice_axis(self, affine: np.ndarray) -> int:
        if not isinstance(self.slice_axis, str):
            return int(self.slice_axis)
        codes = nib.aff2axcodes(affine)
        for axis, code in enumerate(codes):
            if code in _ORIENTATION_AXES[self.slice_axis]:
                return axis
        raise ValueError(f"cannot find the {self.slice_axis} axis in orientation {codes}; pass slice_axis=0..2")

    # -- loading -----------------------------------------------------------------------------------------------
    def _target_grid(self, record: _L2RPair, image: np.ndarray, affine: np.ndarray,
                     mask: np.ndarray | None) -> Grid:
        """The fixed grid, sliced (2D mode), rescaled to ``spacing`` and cropped/padded to ``shape``."""
        grid = Grid(tuple(image.shape), affine)
        axis = record.slice_axis
        if axis is not None and record.file_ndim == 3:
            index = self.slice_index
            if index is None:
                # The middle of the mask's extent along the slice axis; the middle of the volume without a mask.
                extent = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) \
                    if mask is not None else np.zeros(0)
                index = int((extent[0] + extent[-1]) // 2) if extent.size else (image.shape[axis] - 1) // 2
            grid = slice_grid(grid, axis, index)
        plane = [a for a in range(3) if a != axis]
        if self.spacing is not None:
            target = voxel_spacing(grid.affine)
            target[plane] = self.spacing  # the slice axis (2D mode) keeps its own spacing
            grid = rescale_grid(grid, target)
        if self.shape is not None:
            size = list(grid.shape)
            for a, n in zip(plane, self.shape):
                size[a] = n
            grid = crop_grid(grid, size)
        return grid

    def _load(self, record: _L2RPair) -> dict[str, Any]:
        fixed, affine_f = _load_image(record.fixed)
        moving, affine_m = _load_image(record.moving)
        fixed_mask = moving_mask = None
        if record.fixed_mask is not None:
            fixed_mask, moving_mask = _load_mask(record.fixed_mask)[0], _load_mask(record.moving_mask)[0]
        if record.fixed_labels is not None:
            fixed_labels = _load_labels(record.fixed_labels, self.num_classes)[0]
            moving_labels = _load_labels(record.moving_labels, self.num_classes)[0]
        elif fixed_mask is not None and self.labels_dir is None:  # fallback classes: background, lung
            fixed_labels, moving_labels = fixed_mask.astype(np.int64), moving_mask.astype(np.int64)
        else:
            fixed_labels = moving_labels = None
        fixed, moving = window_ct(fixed, self.hu_window), window_ct(moving, self.hu_window)
        if self.mask_images and fixed_mask is not None:
            fixed, moving = fixed * fixed_mask, moving * moving_mask

        grid = self._target_grid(record, fixed, affine_f, fixed_mask)
        out: dict[str, Any] = {
            "fixed": resample_volume(fixed, affine_f, grid, order=1),
            "moving": resample_volume(moving, affine_m, grid, order=1),
        }
        if fixed_labels is not None:
            out["fixed_labels"] = resample_volume(fixed_labels, affine_f, grid, order=0)
            out["moving_labels"] = resample_volume(moving_labels, affine_m, grid, order=0)
        if fixed_mask is not None:
            out["fixed_mask"] = resample_volume(fixed_mask, affine_f, grid, order=0)
            out["moving_mask"] = resample_volume(moving_mask, affine_m, grid, order=0)
        affine, plane = _drop_axis(grid, record.slice_axis)
        if record.fixed_keypoints is not None:
            points = [read_keypoints(path, record.file_ndim) for path in (record.fixed_keypoints,
                                                                           record.moving_keypoints)]
            if len(points[0]) != len(points[1]):
                raise ValueError(f"keypoint files {record.fixed_keypoints} and {record.moving_keypoints} differ in "
                                 f"point count ({len(points[0])} vs {len(points[1])})")
            points = [np.pad(p, ((0, 0), (0, 3 - p.shape[1]))) for p in points]
            fixed_points = map_points(points[0], affine_f, grid.affine)
            moving_points = map_points(points[1], affine_m, grid.affine)
            # The fixed point decides the slice (2D); the moving point's out-of-plane coordinate is dropped.
            keep = _inside(fixed_points, grid.shape, range(3)) & _inside(moving_points, grid.shape, plane)
            out["fixed_keypoints"] = fixed_points[keep][:, plane]
            out["moving_keypoints"] = moving_points[keep][:, plane]
        if record.displacement is not None:
            field = np.asarray(nib.load(str(record.displacement)).get_fdata(dtype=np.float32))
            field = field.reshape(field.shape[:record.file_ndim] + (record.file_ndim,))
            field = np.moveaxis(field[:, :, None, :] if record.file_ndim == 2 else field, -1, 0)
            field = np.concatenate([field, np.zeros((3 - len(field),) + field.shape[1:], np.float32)])
            out["gt_displacement"] = resample_displacement(field, affine_f, grid)[plane]
        if record.slice_axis is not None:
            for key in ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask"):
                if key in out:
                    out[key] = np.take(out[key], 0, axis=record.slice_axis)
            if "gt_displacement" in out:
                out["gt_displacement"] = np.take(out["gt_displacement"], 0, axis=record.slice_axis + 1)
        spacing = voxel_spacing(grid.affine)[plane]
        return _tensor_item(spacing=spacing, affine=affine, pair_id=record.pair_id, **out)


class NLSTDataset(Learn2RegDataset):
    """Learn2Reg NLST lung CT (baseline -> follow-up of one subject), 3D, 224x192x224 voxels of 1.5 mm.

    Layout::

        ROOT/NLST_dataset.json             pair lists (see below)
        ROOT/imagesTr/NLST_XXXX_0000.nii.gz   fixed (baseline);  NLST_XXXX_0001.nii.gz moving (follow-up)
        ROOT/masksTr/NLST_XXXX_000N.nii.gz    lung masks
        ROOT/keypointsTr/NLST_XXXX_000N.csv   corresponding points: no header, x,y,z 0-based voxel indices in
                                              nibabel's array order, row i of _0000 <-> row i of _0001
        LABELS_DIR/NLST_XXXX_000N.nii.gz      optional tissue labels (e.g. merged TotalSegmentator output)

    Classes: with ``labels_dir`` (relative to ROOT or absolute) the label maps hold ``0..C-1`` named by
    ``class_names`` (default ``("background", "lung", "bones", "liver")``); without it the lung mask gives
    ``("background", "lung")``. Items carry the lung masks as ``fixed_mask``/``moving_mask``.

    Splits: ``train`` = ``training_paired_images`` minus the ``registration_val`` (and test) pairs (the JSON lists
    the validation pairs among the training pairs), ``val`` = ``registration_val`` (cases 0101-0110 in the
    release), ``test`` = ``registration_test`` (only when those images are present). ``pairs=`` restricts a split
    to a list of ids; the pair id is the 4-digit case id (``"0101"``).

    Preprocessing: HU clipped to ``hu_window`` (default [-1000, 1000]) and scaled to [0, 1]; ``mask_images``
    multiplies each image by its lung mask. ``spacing`` resamples (linear images, nearest labels/masks, keypoints
    mapped), ``shape`` centre-crops/pads (keypoints whose fixed or moving point leaves the grid are dropped from
    both lists). The moving image is resampled onto the fixed grid through the affines (identical in NLST).

    2D mode (``ndim=2``): one slice along ``slice_axis`` (default ``"coronal"``: the array axis that the affine
    labels anterior/posterior, axis 1 for NLST) at ``slice_index`` (default: the middle of the fixed lung mask's
    extent along that axis). Keypoints whose fixed point lies within [-0.5, 0.5) voxel of the slice are kept and
    projected onto the plane; their out-of-plane motion is ignored. ``spacing``/``shape`` are then in-plane
    (2 values). The 2D affine has the in-plane axes as its first two columns and the slice axis third.
    """

    name = "nlst"
    prefix = "NLST"
    json_name = "NLST_dataset.json"


class LungCTDataset(Learn2RegDataset):
    """Learn2Reg Lung CT (inspiration/expiration of one subject), 3D; same layout and options as NLST.

    Layout: ``ROOT/LungCT_dataset.json``, ``imagesTr/LungCT_XXXX_000N.nii.gz``, ``masksTr/`` (lung masks),
    ``keypointsTr/LungCT_XXXX_000N.csv``, optional ``labels_dir``. Which image of a case is fixed is read from the
    JSON pair lists. Classes, splits, intensity window, ``spacing``/``shape`` and the 2D mode are as for
    :class:`NLSTDataset`.

    Differences from NLST: the two images of a pair may differ in spacing, shape and orientation. Both are
    resampled onto one grid, the fixed image's grid by default (or that grid rescaled to ``spacing`` and
    cropped/padded to ``shape``): the moving image, mask and labels are sampled through
    ``inv(A_moving) @ A_grid`` and the moving keypoints are mapped voxel -> world (``A_moving``) -> voxel of the
    grid, so they stay on the same anatomy. Moving content outside the fixed field of view reads as background.
    """

    name = "lungct"
    prefix = "LungCT"
    json_name = "LungCT_dataset.json"


class PhantomDataset(Learn2RegDataset):
    """Synthetic CT-like phantom written by ``phantom.py`` (2D or 3D) with a known true displacement.

    Layout (the NLST layout with prefix ``PHANTOM``)::

        ROOT/PHANTOM_dataset.json               ndim, spacing, labels, pair lists, materials, ...
        ROOT/imagesTr/PHANTOM_XXXX_000N.nii.gz     fixed (0000) and moving (0001), HU
        ROOT/masksTr/   ROOT/labelsTr/          body masks, tissue labels 0..C-1 (same names)
        ROOT/keypointsTr/PHANTOM_XXXX_000N.csv     corresponding points, voxel coordinates
        ROOT/groundtruthTr/disp_XXXX_XXXX.nii.gz   true displacement [*S, ndim], voxels, fixed grid

    Classes come from the JSON ``labels`` (``background, soft_tissue, lung, bone, liver``). Splits: the three
    JSON lists (disjoint). ``gt_displacement`` ``[ndim, *S]`` (voxels of the returned grid) satisfies
    ``moving(x + u(x)) = fixed(x)``; under ``spacing`` it is resampled and divided by the per-axis scale, under
    ``shape`` it is cropped (0 where padded). ``ndim`` defaults to the files' own; ``ndim=2`` of a 3D phantom
    takes a slice as for NLST (the out-of-plane component of the displacement is dropped). Intensities as NLST.
    """

    name = "phantom"
    prefix = "PHANTOM"
    json_name = "PHANTOM_dataset.json"
    has_displacement = True

    def __init__(self, root: str | Path, split: str = "train", *, ndim: int | None = None,
                 spacing: Sequence[float] | None = None, shape: Sequence[int] | None = None,
                 hu_window: Sequence[float] = DEFAULT_HU_WINDOW, mask_images: bool = False,
                 slice_axis: str | int = "coronal", slice_index: int | None = None,
                 pairs: Sequence[str] | None = None, cache: bool = False) -> None:
        super().__init__(root, split, ndim=ndim, spacing=spacing, shape=shape, hu_window=hu_window,
                         mask_images=mask_images, slice_axis=slice_axis, slice_index=slice_index, pairs=pairs,
                         cache=cache)
        self.options.pop("labels_dir", None)

    def _file_ndim(self) -> int:
        ndim = self.description.get("ndim")
        if ndim not in (2, 3):
            raise ValueError(f"{self.json_path}: 'ndim' must be 2 or 3, got {ndim!r}")
        return int(ndim)

    def _class_names(self, class_names: Sequence[str] | None) -> tuple[str, ...]:
        labels = self.description.get("labels")
        try:
            names = tuple(labels[str(i)] for i in range(len(labels)))
        except (KeyError, TypeError):
            raise ValueError(f"{self.json_path}: 'labels' must map '0'..'C-1' to class names, got {labels!r}") \
                from None
        if len(names) < 2:
            raise ValueError(f"{self.json_path}: 'labels' needs at least 2 classes, got {labels!r}")
        return names

    def _label_path(self, image: Path) -> Path:
        return _sibling(image, "labels")


# ----------------------------------------------------------------------------------------------------------------
# ACDC
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class _ACDCPair:
    pair_id: str
    fixed: Path
    moving: Path
    fixed_labels: Path
    moving_labels: Path
    slice_index: int | None  # None: the whole volume (ndim=3)


def _read_info_cfg(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"ACDC patient description not found: {path}")
    info = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _complete_slices(fixed_labels: np.ndarray, moving_labels: np.ndarray, num_classes: int) -> list[int]:
    """Indices z along the last axis where both label maps contain every class ``1..C-1``."""
    wanted = set(range(1, num_classes))
    return [z for z in range(fixed_labels.shape[-1])
            if wanted <= set(np.unique(fixed_labels[..., z]).tolist())
            and wanted <= set(np.unique(moving_labels[..., z]).tolist())]


class ACDCDataset(PairDataset):
    """ACDC cine MR (Automated Cardiac Diagnosis Challenge): end-diastole (fixed) to end-systole (moving).

    Layout: ``ROOT/database/training/patientXXX/`` or ``ROOT/training/patientXXX/`` (and ``testing/``) holding
    ``Info.cfg`` (lines ``ED: 1``, ``ES: 12``), ``patientXXX_frameYY.nii.gz`` and ``patientXXX_frameYY_gt.nii.gz``.
    Short-axis slices are stacked along the third array axis.

    Classes: ``("background", "rv", "myocardium", "lv")`` (labels 0..3).

    Splits (by patient, so no patient is in two splits): ``train_ids`` 1-80, ``val_ids`` 81-90 and ``test_ids``
    91-100 of ``training/``; ``test_source="testing"`` takes the test split from ``testing/`` instead (all its
    patients unless ``test_ids`` is given). Patients of a range missing on disk are skipped with a warning.

    2D (default, ``ndim=2``): ``slices="middle"`` gives one pair per patient (id ``patientXXX``): among the slices
    where both frames contain every class, the one nearest to the middle of the first and last such slice (the
    lower on a tie); ``slices="all"`` gives every such slice (ids ``patientXXX_zNN``, NN the slice index).
    Slices are found when the dataset is built (label maps are read then). ``ndim=3`` returns whole volumes.

    Preprocessing: intensities per frame (whole volume) scaled by the 1st/99th percentiles (``percentiles``) and
    clipped to [0, 1]; resampled in-plane to ``spacing`` (default 1.5 x 1.5 mm; through-plane kept) and
    cropped/padded in-plane to ``shape`` (default 128 x 128) centred on the centroid of the heart (the union of
    both frames' foreground labels on the slice, or in the volume for ``ndim=3``). ``None`` skips a step.
    No keypoints or masks.
    """

    name = "acdc"
    CLASS_NAMES = ("background", "rv", "myocardium", "lv")

    def __init__(self, root: str | Path, split: str = "train", *, ndim: int | None = None,
                 slices: str = "middle", spacing: Sequence[float] | None = (1.5, 1.5),
                 shape: Sequence[int] | None = (128, 128), percentiles: Sequence[float] = (1.0, 99.0),
                 train_ids: Sequence[int] = tuple(range(1, 81)), val_ids: Sequence[int] = tuple(range(81, 91)),
                 test_ids: Sequence[int] | None = None, test_source: str = "training",
                 pairs: Sequence[str] | None = None, cache: bool = False) -> None:
        super().__init__(root, split, cache)
        if ndim not in (None, 2, 3):
            raise ValueError(f"ndim must be 2 (slices, default) or 3 (volumes), got {ndim!r}")
        self.ndim = 2 if ndim is None else int(ndim)
        if slices not in ("middle", "all") or (self.ndim == 3 and slices != "middle"):
            raise ValueError(f"slices must be 'middle' or 'all' (2D only; ndim=3 gives whole volumes), got {slices!r}")
        if test_source not in ("training", "testing"):
            raise ValueError(f"test_source must be 'training' or 'testing', got {test_source!r}")
        self.slices, self.test_source = slices, test_source
        self.spacing = _check_tuple(spacing, 2, "spacing", float)
        self.shape = _check_tuple(shape, 2, "shape", int)
        try:
            low, high = (float(p) for p in percentiles)
        except (TypeError, ValueError):
            low = high = float("nan")
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles!r}")
        self.percentiles = (low, high)
        self.class_names = self.CLASS_NAMES
        ids = {"train": [int(i) for i in train_ids], "val": [int(i) for i in val_ids],
               "test": None if test_ids is None else [int(i) for i in test_ids]}
        if ids["test"] is None and test_source == "training":
            ids["test"] = list(range(91, 101))
        groups = [("train", ids["train"]), ("val", ids["val"])]
        if test_source == "training":
            groups.append(("test", ids["test"]))
        for i, (name_a, a) in enumerate(groups):
            for name_b, b in groups[i + 1:]:
                if set(a) & set(b):
                    raise ValueError(f"{name_a}_ids and {name_b}_ids share patients {sorted(set(a) & set(b))}")
        self.options = dict(ndim=self.ndim, slices=slices, spacing=self.spacing, shape=self.shape,
                            percentiles=self.percentiles, test_source=test_source, cache=self.cache)
        folder = self._folder("testing" if split == "test" and test_source == "testing" else "training")
        present = {int(p.name[7:]): p for p in folder.iterdir()
                   if p.is_dir() and re.fullmatch(r"patient\d{3}", p.name)}
        wanted = ids[split]
        if wanted is None:
            wanted = sorted(present)
        missing = [i for i in wanted if i not in present]
        if missing:
            warnings.warn(f"ACDC {split}: {len(missing)} patient(s) of the split are not in {folder}: "
                          f"{missing[:10]}{' ...' if len(missing) > 10 else ''}", stacklevel=2)
        for number in sorted(i for i in wanted if i in present):
            self._pairs.extend(self._check_patient(present[number]))
        self._restrict(pairs, folder)

    def _folder(self, which: str) -> Path:
        for candidate in (self.root / "database" / which, self.root / which):
            if candidate.is_dir():
                return candidate
        raise FileNotFoundError(f"ACDC folder not found: {self.root / 'database' / which} or {self.root / which}")

    def _check_patient(self, patient: Path) -> list[_ACDCPair]:
        info_path = patient / "Info.cfg"
        info = _read_info_cfg(info_path)
        try:
            frames = {key: int(info[key]) for key in ("ED", "ES")}
        except (KeyError, ValueError):
            raise ValueError(f"{info_path}: needs integer 'ED: n' and 'ES: n' lines, got {info}") from None
        paths = {key: (patient / f"{patient.name}_frame{n:02d}.nii.gz",
                       patient / f"{patient.name}_frame{n:02d}_gt.nii.gz") for key, n in frames.items()}
        headers = {}
        for key, (image, labels) in paths.items():
            headers[key] = _header(image, f"{key} frame")
            if len(headers[key][0]) != 3:
                raise ValueError(f"{image}: expected a 3D frame [H, W, slices], header shape {headers[key][0]}")
            _check_same_grid(labels, _header(labels, f"{key} labels"), image, headers[key])
        _check_same_grid(paths["ES"][0], headers["ES"], paths["ED"][0], headers["ED"])
        args = (patient.name, paths["ED"][0], paths["ES"][0], paths["ED"][1], paths["ES"][1])
        if self.ndim == 3:
            return [_ACDCPair(*args, slice_index=None)]
        labels_ed = _load_labels(paths["ED"][1], self.num_classes)[0]
        labels_es = _load_labels(paths["ES"][1], self.num_classes)[0]
        candidates = _complete_slices(labels_ed, labels_es, self.num_classes)
        if not candidates:
            raise ValueError(f"{paths['ED'][1]} and {paths['ES'][1]}: no slice contains every class "
                             f"{self.class_names[1:]} in both frames; exclude {patient.name} with pairs=")
        if self.slices == "all":
            return [_ACDCPair(f"{patient.name}_z{z:02d}", *args[1:], slice_index=z) for z in candidates]
        centre = (candidates[0] + candidates[-1]) / 2.0
        return [_ACDCPair(*args, slice_index=min(candidates, key=lambda z: (abs(z - centre), z)))]

    def _load(self, record: _ACDCPair) -> dict[str, Any]:
        fixed, affine_f = _load_image(record.fixed)
        moving, affine_m = _load_image(record.moving)
        fixed_labels = _load_labels(record.fixed_labels, self.num_classes)[0]
        moving_labels = _load_labels(record.moving_labels, self.num_classes)[0]
        fixed, moving = robust_minmax(fixed, self.percentiles), robust_minmax(moving, self.percentiles)

        grid = Grid(tuple(fixed.shape), affine_f)
        foreground = (fixed_labels > 0) | (moving_labels > 0)
        if record.slice_index is not None:
            grid = slice_grid(grid, 2, record.slice_index)
            foreground = foreground[..., record.slice_index:record.slice_index + 1]
        if self.spacing is not None:
            grid = rescale_grid(grid, (*self.spacing, voxel_spacing(grid.affine)[2]))
        if self.shape is not None:
            if foreground.any():
                centre = np.argwhere(foreground).mean(axis=0)
            else:
                centre = (np.asarray(foreground.shape, dtype=np.float64) - 1.0) / 2.0
            if record.slice_index is not None:
                centre[2] = record.slice_index
            # Centroid in the sliced/rescaled grid's voxel coordinates; through-plane stays whole (or the slice).
            centre = map_points(centre[None], affine_f, grid.affine)[0]
            centre[2] = (grid.shape[2] - 1) / 2.0
            grid = crop_grid(grid, (*self.shape, grid.shape[2]), centre)
        out = {
            "fixed": resample_volume(fixed, affine_f, grid, order=1),
            "moving": resample_volume(moving, affine_m, grid, order=1),
            "fixed_labels": resample_volume(fixed_labels, affine_f, grid, order=0),
            "moving_labels": resample_volume(moving_labels, affine_m, grid, order=0),
        }
        axis = 2 if record.slice_index is not None else None
        affine, plane = _drop_axis(grid, axis)
        if axis is not None:
            out = {key: value[..., 0] for key, value in out.items()}
        return _tensor_item(spacing=voxel_spacing(grid.affine)[plane], affine=affine, pair_id=record.pair_id, **out)


# ----------------------------------------------------------------------------------------------------------------
# Registry and batching
# ----------------------------------------------------------------------------------------------------------------

_DATASETS: dict[str, type[PairDataset]] = {
    "nlst": NLSTDataset,
    "lungct": LungCTDataset,
    "acdc": ACDCDataset,
    "phantom": PhantomDataset,
}


def available_datasets() -> tuple[str, ...]:
    """Names accepted by :func:`get_dataset`."""
    return tuple(_DATASETS)


def get_dataset(name: str, root: str | Path, split: str = "train", **options: Any) -> PairDataset:
    """The ``split`` (``train``/``val``/``test``) of dataset ``name`` stored under ``root``, with its ``options``.

    Raises ValueError for an unknown name or option (listing the valid ones) and for bad data (see the classes).
    """
    key = str(name).lower()
    if key not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    cls = _DATASETS[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "split")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {key!r}; accepted: {accepted}")
    if root is None:
        raise ValueError(f"root must be the folder of the {key} dataset, got None")
    return cls(root, split, **options)


_LIST_KEYS = ("fixed_keypoints", "moving_keypoints", "pair_id")


def collate_pairs(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items for a DataLoader: tensors stacked to ``[B, ...]`` (``spacing`` ``[B, ndim]``, ``affine``
    ``[B, 4, 4]``), keypoints (point counts differ) and ``pair_id`` kept as lists of length B.
    """
    if len(batch) == 0:
        raise ValueError("batch must hold at least one item, got an empty batch")
    keys = list(batch[0])
    for item in batch[1:]:
        if set(item) != set(keys):
            raise ValueError(f"items of a batch must have the same keys: {sorted(keys)} vs {sorted(item)} "
                             f"(pairs {batch[0].get('pair_id')!r}, {item.get('pair_id')!r})")
    out: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in batch]
        if key in _LIST_KEYS or not isinstance(values[0], torch.Tensor):
            out[key] = values
            continue
        shapes = sorted({tuple(v.shape) for v in values})
        if len(shapes) > 1:
            raise ValueError(f"cannot stack {key!r}: shapes {shapes} differ across pairs "
                             f"{[item.get('pair_id') for item in batch]}; set the dataset's shape= option "
                             f"(and spacing=) or use batch size 1")
        out[key] = torch.stack(values)
    return out
