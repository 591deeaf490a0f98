"""Files in and out of inference: an explicit fixed/moving pair as a dataset item, and the Learn2Reg NIfTI outputs.

Reading (:func:`read_pair`) takes any format of :mod:`.image_io` (NIfTI, MHA/MHD, NRRD, a DICOM series folder)
and gives the same dict as a dataset item (see :mod:`.registry`): ``fixed``, ``moving``
``[1, *S]`` float32, optional ``fixed_labels``/``moving_labels`` ``[1, *S]`` int64 and
``fixed_keypoints``/``moving_keypoints`` ``[N, ndim]`` (voxels), ``spacing`` (mm, from the header), the fixed
image's ``affine`` (voxel -> RAS) and ``pair_id``. A 2D image is a 2D file or a 3D one of shape ``[H, W, 1]``.
The moving image, labels and keypoints are carried onto the fixed grid through the affines when the grids
differ (``resample=False`` refuses instead). Every error is a ValueError naming the flag of the file at fault.

Writing (:func:`write_volume`, :func:`write_displacement`) puts arrays ``[*S]`` (or the Learn2Reg field
``[*S, ndim]`` in voxels) on the fixed grid with its affine, gzip-compressed, atomically.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import torch

from ..files import atomic_write
from . import image_io
from .grids import Grid, map_points, resample_volume, voxel_spacing
from .pair_dataset import make_item
from .volume_io import check_same_grid, read_keypoints, robust_minmax, same_affine, window_ct

__all__ = ["INTENSITY_MODES", "read_pair", "read_displacement", "write_volume", "write_displacement", "file_stem"]

#: How explicit images are scaled to [0, 1] as in training: CT window (NLST, Lung CT, phantom), MR percentiles
#: (ACDC) or unchanged (already scaled).
INTENSITY_MODES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ct": window_ct,
    "mr": robust_minmax,
    "none": lambda image: image.astype(np.float32),
}


def file_stem(path: str | Path) -> str:
    """``dir/PHANTOM_0001_0000.nii.gz`` -> ``PHANTOM_0001_0000`` (any format's ending; a DICOM folder's name)."""
    return image_io.strip_suffix(path)


def _read(path: str | Path, flag: str, loader: Callable[..., Any], *args: Any) -> Any:
    """``loader(path, *args)`` (a :mod:`.volume_io` reader) with every failure a ValueError naming ``flag`` and the
    file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{flag} {path}: file not found")
    try:
        return loader(path, *args)
    except Exception as error:  # noqa: BLE001 - the readers raise several types; report them all with the flag
        raise ValueError(f"{flag} {error}") from error


def _read_image(path: str | Path, flag: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Image as 3 axes (a 2D image as ``[H, W, 1]``, float32, values as stored), its affine and its own ndim."""
    array, affine = _read(path, flag, image_io.read_image, "image")
    if array.ndim != 3:
        raise ValueError(f"{flag} {path}: expected a 2D or 3D image, got shape {array.shape}")
    return array, affine, 2 if array.shape[2] == 1 else 3


def _labels(path: str | Path, flag: str, image_path: str | Path, image: tuple[np.ndarray, np.ndarray],
            num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A label map on the grid of the image ``(array, affine)`` read from ``image_path``, with whole values in
    ``0..num_classes-1``, as int64."""
    labels, affine = _read(path, flag, image_io.read_labels, num_classes)
    try:
        check_same_grid(Path(path), (labels.shape, affine), Path(image_path), (image[0].shape, image[1]))
    except ValueError as error:
        raise ValueError(f"{flag} {error}") from error
    return labels, affine


def _keypoints(path: str | Path, flag: str, ndim: int) -> np.ndarray:
    try:
        points = read_keypoints(path, ndim)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{flag}: {error}") from error
    return np.pad(points, ((0, 0), (0, 3 - ndim)))  # the grid maps work on 3 axes


def _both(fixed: Any, moving: Any, what: str) -> bool:
    if (fixed is None) != (moving is None):
        raise ValueError(f"--fixed-{what} and --moving-{what} must be given together")
    return fixed is not None


def read_pair(fixed: str | Path, moving: str | Path, *, fixed_labels: str | Path | None = None,
              moving_labels: str | Path | None = None, fixed_keypoints: str | Path | None = None,
              moving_keypoints: str | Path | None = None, intensity: str = "ct", resample: bool = True,
              num_classes: int | None = None, pair_id: str | None = None) -> dict[str, Any]:
    """Read an explicit pair of image files (any format of :mod:`.image_io`) into a dataset item on the fixed grid.

    ``intensity`` scales both images to [0, 1] (see :data:`INTENSITY_MODES`); labels must hold ``0..C-1``
    (``num_classes``); keypoint CSVs are header-less rows of voxel coordinates of their own image. When the
    moving grid (shape or affine) differs from the fixed one, the moving image (linear), labels (nearest) and
    keypoints are mapped through the affines onto the fixed grid; with ``resample=False`` that is a ValueError
    naming ``--no-resample``. ``pair_id`` defaults to ``<fixed stem>_<moving stem>``.
    """
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"--intensity must be one of {tuple(INTENSITY_MODES)}, got {intensity!r}")
    fixed_image, affine_f, ndim = _read_image(fixed, "--fixed")
    moving_image, affine_m, moving_ndim = _read_image(moving, "--moving")
    if moving_ndim != ndim:
        raise ValueError(f"--moving {moving}: a {moving_ndim}D image cannot be registered to the {ndim}D --fixed "
                         f"image {fixed}")
    same = fixed_image.shape == moving_image.shape and same_affine(affine_f, affine_m)
    if not same and not resample:
        raise ValueError(f"--no-resample: the --fixed image {fixed} (shape {fixed_image.shape[:ndim]}) and the "
                         f"--moving image {moving} (shape {moving_image.shape[:ndim]}) are on different grids "
                         f"(shape or affine); drop --no-resample to resample the moving image onto the fixed grid")
    grid = Grid(tuple(fixed_image.shape), affine_f)
    out: dict[str, Any] = {
        "fixed": INTENSITY_MODES[intensity](fixed_image),
        "moving": resample_volume(INTENSITY_MODES[intensity](moving_image), affine_m, grid, order=1),
    }
    if _both(fixed_labels, moving_labels, "labels"):
        out["fixed_labels"] = _labels(fixed_labels, "--fixed-labels", fixed, (fixed_image, affine_f), num_classes)[0]
        labels, affine = _labels(moving_labels, "--moving-labels", moving, (moving_image, affine_m), num_classes)
        out["moving_labels"] = resample_volume(labels, affine, grid, order=0)
    if _both(fixed_keypoints, moving_keypoints, "keypoints"):
        points_f = _keypoints(fixed_keypoints, "--fixed-keypoints", ndim)
        points_m = _keypoints(moving_keypoints, "--moving-keypoints", ndim)
        if len(points_f) != len(points_m):
            raise ValueError(f"--fixed-keypoints {fixed_keypoints} and --moving-keypoints {moving_keypoints} "
                             f"differ in point count ({len(points_f)} vs {len(points_m)})")
        out["fixed_keypoints"] = points_f[:, :ndim]
        out["moving_keypoints"] = map_points(points_m, affine_m, affine_f)[:, :ndim]
    if ndim == 2:
        out = {key: value[..., 0] if key not in ("fixed_keypoints", "moving_keypoints") else value
               for key, value in out.items()}
    spacing = voxel_spacing(affine_f)[:ndim]
    pair_id = pair_id or f"{file_stem(fixed)}_{file_stem(moving)}"
    return make_item(spacing=spacing, affine=affine_f, pair_id=pair_id, **out)


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    # Code 1 (scanner) in both forms, so viewers that read only the qform (ITK) or only the sform agree.
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6)


def write_volume(path: str | Path, array: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor) -> Path:
    """Write ``array`` ``[*S]`` (any NIfTI dtype) with the 4x4 voxel -> world ``affine`` to ``path`` (.nii.gz)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    data = _nifti_bytes(np.ascontiguousarray(array), affine)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_displacement(path: str | Path, displacement: torch.Tensor, affine: np.ndarray | torch.Tensor) -> Path:
    """Write a field ``[ndim, *S]`` (voxels, fixed grid) in the Learn2Reg layout ``[*S, ndim]``, float32."""
    field = displacement.detach().cpu().float()
    if field.dim() - 1 != field.shape[0]:
        raise ValueError(f"displacement must have shape [ndim, *S], got {tuple(field.shape)}")
    return write_volume(path, field.movedim(0, -1).numpy(), affine)


def read_displacement(path: str | Path) -> tuple[torch.Tensor, np.ndarray]:
    """Read a Learn2Reg field file ``[*S, ndim]`` back as ``[ndim, *S]`` float32 and its affine."""
    image = nib.load(str(path))
    field = np.asarray(image.get_fdata(dtype=np.float32))
    ndim = field.shape[-1]
    field = field.reshape(field.shape[:ndim] + (ndim,))  # a [*S, 1, ndim] layout has a singleton axis to drop
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(field, -1, 0))), np.asarray(image.affine)
