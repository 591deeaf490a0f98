"""Reading volumes and keypoints from disk, and scaling intensities to [0, 1].

NIfTI images, label maps and masks come back as C-ordered arrays with 3 axes (a 2D image ``[H, W]`` as
``[H, W, 1]``) together with their voxel -> world affine (float64 ``[4, 4]``, mm). :func:`read_header` reads
shape and affine without voxel data, so that datasets can check their files when they are built. Keypoints are
header-less comma-separated files of 0-based voxel coordinates. :func:`window_ct` (CT, HU) and
:func:`robust_minmax` (MR, percentiles) map intensities to [0, 1].

Every reader checks the header before it reads voxel data (:func:`~.file_limits.check_declared`: a voxel limit,
real values, as many bytes as declared) and what it reads (images, masks and displacements finite, labels whole numbers in range) and
raises a ValueError naming the file when it cannot read it (truncated or damaged) or its values are wrong;
:func:`check_file` runs the reader of one kind of file, for a dataset's scan of all its files.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from .file_limits import check_affine, check_declared, gzip_size

__all__ = [
    "DEFAULT_HU_WINDOW",
    "AFFINE_ATOL_MM",
    "window_ct",
    "robust_minmax",
    "read_keypoints",
    "keypoint_file_shape",
    "read_header",
    "check_nifti_header",
    "same_affine",
    "check_same_grid",
    "load_image",
    "load_labels",
    "load_mask",
    "load_displacement",
    "FILE_KINDS",
    "check_file",
]

#: CT intensity window (HU) mapped to [0, 1]: air at 0, soft tissue near 0.5, dense bone and metal clipped at 1.
DEFAULT_HU_WINDOW = (-1000.0, 1000.0)
# Affines of an image and its labels/mask must agree to this many mm (NIfTI stores them as float32).
AFFINE_ATOL_MM = 1e-3


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


def keypoint_file_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) of a keypoint file without parsing the numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"keypoint file not found: {path}")
    try:
        with open(path) as handle:
            rows = [line for line in handle if line.strip()]
    except UnicodeDecodeError as error:
        raise ValueError(f"keypoint file {path}: not text ({error})") from None
    return len(rows), (len(rows[0].split(",")) if rows else 0)


def read_header(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from the NIfTI header only (no voxel data is read)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        image = nib.load(str(path))
    except Exception as error:  # noqa: BLE001 - nibabel raises several types; report them with the file name
        raise ValueError(f"{what} {path}: cannot read the NIfTI header ({error})") from error
    check_nifti_header(image, path, what)
    return tuple(int(n) for n in image.shape), np.asarray(image.affine, dtype=np.float64)


def check_nifti_header(image: nib.spatialimages.SpatialImage, path: Path, what: str, stream: bool = False) -> None:
    """:func:`~.file_limits.check_declared` for a NIfTI file opened by nibabel (header only): the first three axes
    are the grid, the others values per voxel; a ``.nii`` must hold its bytes, a ``.nii.gz`` can expand at most
    as much as deflate does. ``stream`` also decompresses a ``.nii.gz`` once (:func:`~.file_limits.gzip_size`) to
    check that it holds every byte, for readers that do not notice a truncated stream."""
    shape = tuple(int(n) for n in image.shape)
    dtype = image.header.get_data_dtype()
    components = 1
    for size in shape[3:]:
        components *= size
    name = path.name.lower()
    compression = "deflate" if name.endswith(".gz") else None
    offset = 0 if compression else int(image.header.get_data_offset())
    available = path.stat().st_size - offset if name.endswith((".nii", ".nii.gz")) else None
    check_declared(path, what, shape[:3], components, dtype.itemsize, dtype.kind == "c", available, compression)
    check_affine(image.affine, shape, path, what)
    if stream and compression:
        offset = int(image.header.get_data_offset())
        check_declared(path, what, shape[:3], components, dtype.itemsize, False, gzip_size(path, what) - offset, None)


def same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two voxel -> world affines ``[4, 4]`` agree within :data:`AFFINE_ATOL_MM` mm (and 1e-5 relative)."""
    return bool(np.allclose(a, b, rtol=1e-5, atol=AFFINE_ATOL_MM))


def check_same_grid(path: Path, header: tuple, reference: Path, ref_header: tuple) -> None:
    """Raise when a labels/mask header does not share its image's shape and affine."""
    if header[0] != ref_header[0]:
        raise ValueError(f"{path}: shape {header[0]} does not match the image {reference} with shape {ref_header[0]}")
    if not same_affine(header[1], ref_header[1]):
        raise ValueError(f"{path}: affine\n{np.round(header[1], 4)}\ndoes not match the affine of the image "
                         f"{reference}\n{np.round(ref_header[1], 4)}")


def _as3d(array: np.ndarray) -> np.ndarray:
    """C-ordered copy of a loaded array; a 2D array ``[H, W]`` as ``[H, W, 1]`` (its 4x4 affine covers axis 3).

    NIfTI data arrive in Fortran order; reordering once here, on the smallest dtype, is cheaper than later.
    """
    array = np.ascontiguousarray(array)
    return array[..., None] if array.ndim == 2 else array


def _open(path: Path, what: str) -> nib.spatialimages.SpatialImage:
    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except Exception as error:  # noqa: BLE001 - nibabel raises several types; report them with the file name
        raise ValueError(f"{what} {path}: cannot read the NIfTI file ({type(error).__name__}: {error})") from None
    check_nifti_header(image, path, what)
    return image


def _voxels(image: nib.spatialimages.SpatialImage, path: Path, what: str, read) -> np.ndarray:
    """``read(image)`` with a truncated or corrupt file (EOFError, zlib or gzip errors...) a ValueError naming it."""
    try:
        return read(image)
    except Exception as error:  # noqa: BLE001 - the decompressors raise several types
        raise ValueError(f"{what} {path}: cannot read the voxel data ({type(error).__name__}: {error}); the file is "
                         f"truncated or damaged") from None


def _check_finite(array: np.ndarray, path: Path, what: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        count = int((~np.isfinite(array)).sum())
        raise ValueError(f"{what} {path}: {count} voxel value(s) are NaN or infinite")


def load_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32, 3 axes, values as stored) and its affine (float64 ``[4, 4]``, voxel -> world mm); every
    value finite."""
    image = _open(path, "image file")
    array = _voxels(image, path, "image file", lambda i: np.asarray(i.get_fdata(dtype=np.float32)))
    _check_finite(array, path, "image file")
    return _as3d(array), np.asarray(image.affine, dtype=np.float64)


def load_labels(path: Path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer label map (int64, 3 axes) and affine; values must be whole numbers in ``0..num_classes-1``."""
    image = _open(path, "label file")
    data = _voxels(image, path, "label file", lambda i: np.asanyarray(i.dataobj))
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ValueError(f"label file {path}: values must be whole numbers")
    data = _as3d(data).astype(np.int64)
    if num_classes is not None and data.size and (data.min() < 0 or data.max() >= num_classes):
        raise ValueError(f"label file {path}: values must lie in 0..{num_classes - 1} ({num_classes} classes), "
                         f"found {sorted(np.unique(data).tolist())[:12]}")
    return data, np.asarray(image.affine, dtype=np.float64)


def load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """0/1 mask (uint8, 3 axes; every nonzero voxel is 1) and its affine (float64 ``[4, 4]``); values finite."""
    image = _open(path, "mask file")
    data = _voxels(image, path, "mask file", lambda i: np.asanyarray(i.dataobj))
    _check_finite(data, path, "mask file")
    return _as3d(data).astype(bool).astype(np.uint8), np.asarray(image.affine, np.float64)


def load_displacement(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A displacement field as stored (float32, Learn2Reg ``[*S, ndim]`` or ``[*S, 1, ndim]``) and its affine;
    every value finite."""
    image = _open(path, "displacement file")
    field = _voxels(image, path, "displacement file", lambda i: np.asarray(i.get_fdata(dtype=np.float32)))
    _check_finite(field, path, "displacement file")
    return field, np.asarray(image.affine, dtype=np.float64)


#: The kinds of file a dataset reads, for :func:`check_file`.
FILE_KINDS = ("image", "labels", "mask", "keypoints", "displacement")


def check_file(kind: str, path: Path, num_classes: int | None = None, ndim: int = 3) -> None:
    """Read the file ``path`` of ``kind`` (:data:`FILE_KINDS`) with its reader and its checks: ValueError (or
    FileNotFoundError) naming the file when it cannot be read or holds wrong values. ``num_classes`` bounds the
    labels, ``ndim`` is the keypoints' number of columns."""
    if kind == "image":
        load_image(path)
    elif kind == "labels":
        load_labels(path, num_classes)
    elif kind == "mask":
        load_mask(path)
    elif kind == "keypoints":
        read_keypoints(path, ndim)
    elif kind == "displacement":
        load_displacement(path)
    else:
        raise ValueError(f"kind must be one of {FILE_KINDS}, got {kind!r}")
