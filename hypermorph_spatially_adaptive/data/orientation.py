"""How a viewer shows a 2D image or a slice of a 3D one: the transpose and flips that its affine calls for.

Arrays are stored in whatever order the scanner wrote them; a radiologist reads every plane the same way
(radiological convention):

=========  ================  =====================================  ===========================
plane      normal            rows, top to bottom                    columns, left to right
=========  ================  =====================================  ===========================
axial      superior (z)      anterior to posterior (A up)           patient's right to left
coronal    anterior (y)      superior to inferior (S up)            patient's right to left
sagittal   right (x)         superior to inferior (S up)            anterior to posterior
=========  ================  =====================================  ===========================

:func:`display_view` finds the plane from the voxel -> RAS affine (the world axis least present in the two shown
array axes is its normal), then which array axis runs down the rows and whether each runs the wrong way. Every
displayed direction runs against its RAS axis (down is -S or -A, right is -R or -A), so one rule covers the three
planes. Pure numpy; figures call :meth:`DisplayView.image` on each 2D array and :meth:`DisplayView.points` on
coordinates drawn over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["DisplayView", "display_view", "PLANES"]

#: Normal world axis (RAS index) -> (plane, world axis down the rows, world axis along the columns, the letters at
#: the top, bottom, left and right of the displayed image).
PLANES = {
    0: ("sagittal", 2, 1, ("S", "I", "A", "P")),
    1: ("coronal", 2, 0, ("S", "I", "R", "L")),
    2: ("axial", 1, 0, ("A", "P", "R", "L")),
}


@dataclass(frozen=True)
class DisplayView:
    """The display of a 2D array ``[n0, n1]``: transpose first (array axis 1 down the rows), then flip the rows
    (top to bottom) and the columns (left to right). ``edges`` are the anatomical letters at the top, bottom, left
    and right of the shown image."""

    plane: str
    transpose: bool
    flip_rows: bool
    flip_cols: bool
    edges: tuple[str, str, str, str]

    def image(self, array: np.ndarray) -> np.ndarray:
        """The 2D ``array`` as displayed (rows top to bottom, columns left to right)."""
        shown = np.asarray(array)
        if shown.ndim != 2:
            raise ValueError(f"array must be 2D, got shape {shown.shape}")
        shown = shown.T if self.transpose else shown
        if self.flip_rows:
            shown = shown[::-1]
        if self.flip_cols:
            shown = shown[:, ::-1]
        return shown

    def aspect(self, spacing: Sequence[float]) -> float:
        """Height / width of a displayed pixel for the ``spacing`` (mm) of array axes 0 and 1 (``imshow(aspect=)``)."""
        first, second = (float(spacing[1]), float(spacing[0])) if self.transpose else (float(spacing[0]),
                                                                                     float(spacing[1]))
        return first / second

    def points(self, index0: np.ndarray, index1: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Array coordinates ``(index0, index1)`` of a 2D array of ``shape`` -> ``(row, column)`` in the displayed
        image (for lines or points drawn over :meth:`image`)."""
        rows, cols = (np.asarray(index1), np.asarray(index0)) if self.transpose else (np.asarray(index0),
                                                                                       np.asarray(index1))
        n_rows, n_cols = (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])
        return (n_rows - 1 - rows if self.flip_rows else rows), (n_cols - 1 - cols if self.flip_cols else cols)


def display_view(affine: np.ndarray, axes: Sequence[int] = (0, 1)) -> DisplayView:
    """How to show the plane spanned by array ``axes`` (two of 0, 1, 2; a 2D item's are ``(0, 1)``) of an image with
    voxel -> RAS ``affine`` ``[4, 4]``, as a radiologist reads it (see the module docstring).

    A 2D image of ``[H, W]`` with its 4x4 affine and the slice of a 3D volume along the third axis both use
    ``axes=(0, 1)``; the slice along axis 1 of a volume uses ``(0, 2)``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    axes = [int(a) for a in axes]
    if len(axes) != 2 or len(set(axes)) != 2 or not all(0 <= a <= 2 for a in axes):
        raise ValueError(f"axes must be two different array axes of 0, 1, 2, got {axes}")
    columns = affine[:3, axes]
    norms = np.linalg.norm(columns, axis=0)
    if not np.all(norms > 0):
        raise ValueError(f"affine has a zero column for the array axes {axes}")
    columns = columns / norms
    normal = int(np.argmin((columns ** 2).sum(axis=1)))
    plane, down, across, edges = PLANES[normal]
    transpose = abs(columns[down, 1]) + abs(columns[across, 0]) > abs(columns[down, 0]) + abs(columns[across, 1])
    row_axis, col_axis = (1, 0) if transpose else (0, 1)
    return DisplayView(plane, bool(transpose), bool(columns[down, row_axis] > 0), bool(columns[across, col_axis] > 0),
                       edges)
