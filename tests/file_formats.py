"""Test helpers: one scene written in every image format the project reads, with SimpleITK's own writers.

``write_scene(array, affine, path)`` writes ``array`` (i, j, k order) on the grid of the voxel -> RAS ``affine`` as
NIfTI, MHA or NRRD by the path's ending, or as a DICOM series (int16, one file per slice) into a folder. Independent
of the package's writers, so that reading is tested against files the package did not write.
"""
from __future__ import annotations

import locale
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["FORMAT_ENDINGS", "rotation", "grid_affine", "itk_image", "write_scene", "write_dicom_series",
           "physical_point", "SCENE_CLASSES", "scene", "scene_grid", "keypoints_of", "write_pair", "write_pairs_csv"]

#: A file ending per format; "dicom" is a folder.
FORMAT_ENDINGS = {"nifti": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd", "dicom": ""}
_LPS = np.diag([-1.0, -1.0, 1.0])


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """A proper rotation (det +1) from three angles (radians) about z, y and x."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def grid_affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """Voxel -> RAS affine of columns ``direction[:, k] * spacing[k]`` and ``origin`` (RAS mm)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)
    affine[:3, 3] = origin
    return affine


def itk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A 3D SimpleITK image of ``array`` ``[i, j, k]`` on the grid of the RAS ``affine`` (converted to LPS)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    linear = _LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((linear / spacing).ravel().tolist())
    image.SetOrigin((_LPS @ affine[:3, 3]).tolist())
    return image


def physical_point(image: sitk.Image, index) -> np.ndarray:
    """SimpleITK's own index -> physical (LPS) mapping, as RAS."""
    return _LPS @ np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))


def write_dicom_series(image: sitk.Image, folder: Path, series: str = "1") -> Path:
    """Write a 3D int16 ``image`` as a DICOM series, one file per slice, with its position and orientation tags."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    uid = f"1.2.826.0.1.3680043.2.1125.{os.getpid()}.{series}"
    orientation = "\\".join(f"{v:.12g}" for v in (direction[0], direction[3], direction[6],
                                                  direction[1], direction[4], direction[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale and keeps it: Python would read ASCII
    try:
        _write_slices(image, folder, series, uid, orientation, writer)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def _write_slices(image, folder, series, uid, orientation, writer) -> None:
    for k in range(image.GetDepth()):
        layer = image[:, :, k]
        position = "\\".join(f"{v:.12g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                           ("0008|0018", f"{uid}.3.{k + 1}"), ("0020|0013", str(k + 1)), ("0020|0032", position),
                           ("0020|0037", orientation), ("0018|0050", f"{image.GetSpacing()[2]:.12g}")):
            layer.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"series{series}_{k:04d}.dcm"))
        writer.Execute(layer)


def write_scene(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write a 3D ``array`` on the grid of ``affine`` in the format of ``path``'s ending (a folder: DICOM)."""
    image = itk_image(array, affine)
    if not path.suffix:
        return write_dicom_series(image, path)
    sitk.WriteImage(image, str(path))
    return path


# --- a tiny cohort of thorax-like scenes --------------------------------------------------------------------------

#: Class names of :func:`scene`: 0 air, 1 body, 2 lung.
SCENE_CLASSES = ["background", "body", "lung"]


def scene(affine: np.ndarray, shape, shift=(0.0, 0.0, 0.0), scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A thorax-like scene sampled on a grid: CT intensities (int16 HU) and labels (uint8, :data:`SCENE_CLASSES`).

    Defined in world (RAS mm) coordinates around the origin, so any grid samples the same anatomy; ``shift``
    (mm) moves it: the scene point at ``p`` lies at ``p + shift``.
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    x, y, z = np.moveaxis(ijk @ affine[:3, :3].T + affine[:3, 3] - np.asarray(shift, float), -1, 0) / scale
    body = (x / 13) ** 2 + (y / 10) ** 2 + (z / 14) ** 2 < 1
    lung = (((np.abs(x) - 5.5) / 4.0) ** 2 + (y / 6) ** 2 + (z / 9) ** 2 < 1) & body
    labels = body.astype(np.uint8) + lung.astype(np.uint8)
    hu = np.select([lung, body], [-850.0, 40.0], -1000.0) + np.where(body, 60 * np.sin(x / 3) * np.cos(z / 4), 0)
    return np.round(hu).astype(np.int16), labels


def scene_grid(shape, spacing, angles=(0.3, -0.2, 0.1)) -> np.ndarray:
    """A rotated grid of ``shape`` voxels of ``spacing`` mm whose centre is the world origin."""
    affine = grid_affine(rotation(*angles), spacing, (0.0, 0.0, 0.0))
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def keypoints_of(affine: np.ndarray, points_world: np.ndarray) -> np.ndarray:
    """Voxel coordinates ``[N, 3]`` of world points on the grid of ``affine``."""
    return (points_world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def write_pair(folder: Path, name: str, fmt: str, label_fmt: str = "nifti", shape=(16, 16, 16), spacing=2.0,
               moving_grid: tuple | None = None, shift=(2.0, -1.5, 1.0), scale: float = 1.0,
               points: int = 12) -> dict[str, str]:
    """Write one pair (fixed scene, moving scene shifted by ``shift`` mm) with labels and keypoints; return the CSV
    cells (paths relative to ``folder``). ``moving_grid`` = (shape, spacing, angles) puts the moving image on
    another grid."""
    fixed_affine = scene_grid(shape, (spacing,) * 3)
    moving_shape, moving_spacing, angles = moving_grid or (shape, (spacing,) * 3, (0.3, -0.2, 0.1))
    moving_affine = scene_grid(moving_shape, moving_spacing, angles)
    world = np.random.default_rng(len(name)).uniform(-8, 8, (points, 3))
    cells = {}
    for side, affine, grid_shape, offset in (("fixed", fixed_affine, shape, (0.0, 0.0, 0.0)),
                                              ("moving", moving_affine, moving_shape, shift)):
        image, labels = scene(affine, grid_shape, offset, scale)
        image_path = write_scene(image, affine, folder / f"{name}_{side}{FORMAT_ENDINGS[fmt]}")
        label_path = write_scene(labels.astype(np.int16), affine,
                                 folder / f"{name}_{side}_labels{FORMAT_ENDINGS[label_fmt]}")
        points_path = folder / f"{name}_{side}_points.csv"
        np.savetxt(points_path, keypoints_of(affine, world + np.asarray(offset)), delimiter=",", fmt="%.6f")
        for key, path in ((side, image_path), (f"{side}_labels", label_path), (f"{side}_keypoints", points_path)):
            cells[key] = str(path.relative_to(folder))
    return cells


def write_pairs_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """A pairs CSV with the union of the rows' columns (missing cells empty)."""
    import csv

    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
