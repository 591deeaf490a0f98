"""Your own pairs: a CSV that lists the files of each pair, in any format SimpleITK reads (:mod:`.image_io`).

See :class:`PairListDataset` for the CSV's columns, the options and the preprocessing.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from . import image_io
from .grids import Grid, drop_axis, fit_plane, map_points, points_inside, resample_volume, slice_grid, voxel_spacing
from .pair_dataset import SPLITS, PairDataset, check_tuple, make_item
from .volume_io import DEFAULT_HU_WINDOW, check_same_grid, keypoint_file_shape, read_keypoints, robust_minmax, \
    window_ct

__all__ = ["PairListDataset", "COLUMNS", "INTENSITIES", "KEYPOINT_UNITS", "DEFAULT_CSV", "read_class_names"]

#: The columns of a pairs CSV: ``fixed`` and ``moving`` are required, the others optional.
COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_keypoints", "moving_keypoints", "split",
           "pair_id")
#: Intensity scaling to [0, 1]: CT window (HU), MR percentiles, or none (the files hold [0, 1] already).
INTENSITIES = ("ct", "mr", "none")
#: Units of the keypoint files: voxel indices (i, j, k) of their own image, or world millimetres (RAS or LPS).
KEYPOINT_UNITS = ("voxel", "ras", "lps")
#: The file read when the dataset root is a folder.
DEFAULT_CSV = "pairs.csv"
_ORIENTATION_AXES = {"coronal": ("A", "P"), "axial": ("S", "I"), "sagittal": ("L", "R")}
_FILE_COLUMNS = COLUMNS[:6]


@dataclass
class _ListedPair:
    pair_id: str
    split: str | None  # None: the CSV has no split column, the pair belongs to every split
    fixed: Path
    moving: Path
    fixed_labels: Path | None = None
    moving_labels: Path | None = None
    fixed_keypoints: Path | None = None
    moving_keypoints: Path | None = None
    file_ndim: int = 3
    fixed_affine: np.ndarray | None = None  # from the header, to find the slice axis by orientation
    slice_axis: int | None = None  # array axis removed in a 2D output; None for a 3D output


def _unsafe_id(pair_id: str) -> str | None:
    """Why ``pair_id`` cannot be one component of a file name, or None when it can."""
    if pair_id in ("", ".", ".."):
        return "is not a file name"
    for character, name in (("/", "a slash"), ("\\", "a backslash"), ("\0", "a NUL character")):
        if character in pair_id:
            return f"contains {name}"
    return None


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a small JSON file: a list (class 0 first), a mapping ``{"0": "background", ...}``, or an
    object with such a ``labels`` entry (as a Learn2Reg ``*_dataset.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes_json file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"classes_json {path}: not valid JSON in UTF-8 ({error})") from None
    if isinstance(data, dict) and "labels" in data:
        data = data["labels"]
    if isinstance(data, dict):
        try:
            data = [data[str(i)] for i in range(len(data))]
        except KeyError:
            raise ValueError(f"classes_json {path}: a mapping must have the keys '0'..'{len(data) - 1}', got "
                             f"{sorted(data)}") from None
    if not isinstance(data, list):
        raise ValueError(f"classes_json {path}: expected a list of class names or a mapping '0'..'C-1' -> name")
    return tuple(data)


class PairListDataset(PairDataset):
    """Pairs listed in a CSV file, in any format SimpleITK reads: NIfTI, MHA/MHD, NRRD or a DICOM series folder.

    ``root`` is the CSV file, or a folder holding ``pairs.csv``. One row per pair, a header row naming the columns
    (any order; empty cells of optional columns mean "none"):

    ==================================  ===========================================================================
    column                              content
    ==================================  ===========================================================================
    ``fixed``, ``moving``               image files (required); the pair is registered on the fixed image's grid
    ``fixed_labels``, ``moving_labels`` label maps ``0..C-1`` on their image's grid (both or neither)
    ``fixed_keypoints``,                header-less CSVs of corresponding points, row i <-> row i, in voxel indices
    ``moving_keypoints``                (i, j, k) of their own image (``keypoint_units``; both or neither)
    ``split``                           ``train``, ``val`` or ``test``; without the column every pair is in every
                                        split (the same pairs train, choose parameters and are registered)
    ``pair_id``                         unique id (default ``<fixed name>_<moving name>`` without the endings);
                                        it names output files, so it is one plain file name (no ``/``, ``\\``
                                        or NUL, not ``.`` or ``..``)
    ==================================  ===========================================================================

    Relative paths are resolved against the CSV's folder; they may lead out of it with ``..`` (the CSV is the
    user's own list of files, unlike a dataset description, whose paths must stay inside its root). Options: ``class_names`` (a list, class 0 first) or
    ``classes_json`` (a JSON list or ``{"0": name, ...}``, relative to the CSV's folder) name the label values;
    they are required when the pairs have label maps. ``intensity`` scales each image to [0, 1]: ``ct`` (HU
    clipped to ``hu_window``, default [-1000, 1000]), ``mr`` (``percentiles``, default 1st/99th) or ``none``.

    Geometry as for NLST: the moving image, its labels (nearest) and keypoints are carried onto the fixed grid
    through physical space (moving content outside the fixed field of view reads as background); ``spacing`` and
    ``shape`` resample and crop/pad; ``ndim=2`` takes one slice of 3D files along ``slice_axis`` (``coronal``,
    ``axial``, ``sagittal`` by the affine, or an array axis) at ``slice_index`` (default: the middle of the fixed
    labels' extent along that axis, else of the volume). Files are checked (format, header, label grids, keypoint
    counts) when the dataset is built; voxel data is read per item.
    """

    name = "pairs"

    def __init__(self, root: str | Path, split: str = "train", *, class_names: Sequence[str] | None = None,
                 classes_json: str | Path | None = None, ndim: int | None = None,
                 spacing: Sequence[float] | None = None, shape: Sequence[int] | None = None,
                 intensity: str = "ct", hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
                 percentiles: Sequence[float] = (1.0, 99.0), keypoint_units: str = "voxel",
                 slice_axis: str | int = "coronal", slice_index: int | None = None,
                 pairs: Sequence[str] | None = None, cache: bool = False) -> None:
        location = Path(root).expanduser()
        self.csv_path = location / DEFAULT_CSV if location.is_dir() else location
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"pairs CSV not found: {self.csv_path}")
        super().__init__(self.csv_path.parent, split, cache)
        if intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")
        if keypoint_units not in KEYPOINT_UNITS:
            raise ValueError(f"keypoint_units must be one of {KEYPOINT_UNITS}, got {keypoint_units!r}")
        try:
            low, high = (float(v) for v in hu_window)
            p_low, p_high = (float(v) for v in percentiles)
        except (TypeError, ValueError):
            low = high = p_low = p_high = float("nan")
        if not low < high:
            raise ValueError(f"hu_window must be (low, high) HU with low < high, got {hu_window!r}")
        if not 0 <= p_low < p_high <= 100:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles!r}")
        if not (slice_axis in _ORIENTATION_AXES or (isinstance(slice_axis, (int, np.integer))
                                                    and 0 <= int(slice_axis) <= 2)):
            raise ValueError(f"slice_axis must be one of {tuple(_ORIENTATION_AXES)} or an array axis 0..2, "
                             f"got {slice_axis!r}")
        if ndim not in (None, 2, 3):
            raise ValueError(f"ndim must be 2, 3 or None (the files' own), got {ndim!r}")
        self.intensity, self.hu_window, self.percentiles = intensity, (low, high), (p_low, p_high)
        self.keypoint_units, self.slice_axis, self.slice_index = keypoint_units, slice_axis, slice_index
        records = self._read_csv()
        file_ndim = self._check_files(records)
        if ndim == 3 and file_ndim == 2:
            raise ValueError(f"ndim=3 was requested but {self.csv_path} lists 2D images")
        self.ndim = file_ndim if ndim is None else int(ndim)
        if slice_index is not None and (not isinstance(slice_index, (int, np.integer)) or slice_index < 0
                                        or not (self.ndim == 2 and file_ndim == 3)):
            raise ValueError(f"slice_index must be None or a non-negative integer, and only applies to the 2D mode "
                             f"(ndim=2) of 3D images; got {slice_index!r} with ndim={self.ndim}, files {file_ndim}D")
        self.spacing = check_tuple(spacing, self.ndim, "spacing", float)
        self.shape = check_tuple(shape, self.ndim, "shape", int)
        has_labels = any(r.fixed_labels is not None for r in records)
        self.class_names = self._class_names(class_names, classes_json, has_labels)
        self.options = dict(csv=str(self.csv_path), ndim=self.ndim, spacing=self.spacing, shape=self.shape,
                            intensity=intensity, hu_window=self.hu_window, percentiles=self.percentiles,
                            keypoint_units=keypoint_units, slice_axis=slice_axis, slice_index=slice_index,
                            cache=self.cache)
        for record in records:
            self._set_slice_axis(record, file_ndim)
        self._pairs = [r for r in records if r.split in (None, split)]
        self._restrict(pairs, self.csv_path)

    # -- construction ------------------------------------------------------------------------------------------
    def _path(self, cell: str) -> Path:
        path = Path(os.path.expanduser(cell.strip()))
        return Path(os.path.normpath(path if path.is_absolute() else self.root / path))

    def _read_csv(self) -> list[_ListedPair]:
        with self.csv_path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            rows = [(line, row) for line, row in enumerate(reader, start=2) if any(cell.strip() for cell in row)]
        unknown = [name for name in header if name not in COLUMNS]
        if unknown or "fixed" not in header or "moving" not in header or len(set(header)) != len(header):
            raise ValueError(f"{self.csv_path}: header {header}; the columns are {list(COLUMNS)} (fixed and moving "
                             f"required, each at most once)")
        records, seen = [], {}
        for line, row in rows:
            if len(row) != len(header):
                raise ValueError(f"{self.csv_path}, line {line}: {len(row)} cells, the header has {len(header)}")
            cells = {name: cell.strip() for name, cell in zip(header, row)}
            for side in ("fixed", "moving"):
                if not cells[side]:
                    raise ValueError(f"{self.csv_path}, line {line}: the {side} image is empty")
            files = {name: self._path(cells[name]) if cells.get(name) else None for name in _FILE_COLUMNS}
            for kind in ("labels", "keypoints"):
                if (files[f"fixed_{kind}"] is None) != (files[f"moving_{kind}"] is None):
                    raise ValueError(f"{self.csv_path}, line {line}: give fixed_{kind} and moving_{kind} together")
            split = cells.get("split") if "split" in header else None
            if split is not None and split not in SPLITS:
                raise ValueError(f"{self.csv_path}, line {line}: split must be one of {SPLITS}, got {split!r}")
            pair_id = cells.get("pair_id") or \
                f"{image_io.strip_suffix(files['fixed'])}_{image_io.strip_suffix(files['moving'])}"
            problem = _unsafe_id(pair_id)
            if problem:
                raise ValueError(f"{self.csv_path}, line {line}: pair id {pair_id!r} {problem}; ids name the "
                                 f"stages' output files, so each must be one plain file name")
            if pair_id in seen:
                raise ValueError(f"{self.csv_path}, line {line}: pair id {pair_id!r} is also on line {seen[pair_id]}; "
                                 f"ids must be unique (add a pair_id column)")
            seen[pair_id] = line
            records.append(_ListedPair(pair_id, split, **files))
        if not records:
            raise ValueError(f"{self.csv_path}: no pairs (a header row and one row per pair)")
        return records

    def _check_files(self, records: list[_ListedPair]) -> int:
        """Check every file's header (no voxel data); return the images' dimension (2 or 3, the same for all)."""
        file_ndim = None
        where = f"(listed in {self.csv_path})"
        for record in records:
            heads = {}
            for side in ("fixed", "moving"):
                try:
                    head = image_io.read_header(getattr(record, side), f"{side} image of pair {record.pair_id}")
                except FileNotFoundError as error:
                    raise FileNotFoundError(f"{error} {where}") from None
                if head.components != 1:
                    raise ValueError(f"{getattr(record, side)}: expected one value per voxel, got {head.components} "
                                     f"components {where}")
                file_ndim = len(head.shape) if file_ndim is None else file_ndim
                if len(head.shape) != file_ndim:
                    raise ValueError(f"{getattr(record, side)}: a {len(head.shape)}D image among {file_ndim}D ones "
                                     f"{where}; all images of a pairs CSV have one dimension")
                if sum(size > 1 for size in head.shape) < 2:
                    raise ValueError(f"{getattr(record, side)}: an image of {'x'.join(map(str, head.shape))} "
                                     f"voxels {where}; registration needs at least 2 voxels along 2 axes")
                heads[side] = head
                labels = getattr(record, f"{side}_labels")
                if labels is not None:
                    label_head = image_io.read_header(labels, f"{side} label map of pair {record.pair_id}")
                    check_same_grid(labels, (label_head.shape, label_head.affine), getattr(record, side),
                                    (head.shape, head.affine))
            record.file_ndim = file_ndim
            if record.fixed_keypoints is not None:
                (rows_f, cols_f), (rows_m, cols_m) = (keypoint_file_shape(record.fixed_keypoints),
                                                      keypoint_file_shape(record.moving_keypoints))
                if rows_f != rows_m:
                    raise ValueError(f"keypoint files of pair {record.pair_id} differ in point count: "
                                     f"{record.fixed_keypoints} has {rows_f} rows, {record.moving_keypoints} {rows_m}")
                for path, cols, rows in ((record.fixed_keypoints, cols_f, rows_f),
                                         (record.moving_keypoints, cols_m, rows_m)):
                    if rows and cols != file_ndim:
                        raise ValueError(f"keypoint file {path}: expected {file_ndim} columns, got {cols}")
            record.fixed_affine = heads["fixed"].affine
        return int(file_ndim)

    def _set_slice_axis(self, record: _ListedPair, file_ndim: int) -> None:
        if file_ndim == 2:
            record.slice_axis = 2
        elif self.ndim == 3:
            record.slice_axis = None
        elif not isinstance(self.slice_axis, str):
            record.slice_axis = int(self.slice_axis)
        else:
            codes = nib.aff2axcodes(record.fixed_affine)
            axes = [axis for axis, code in enumerate(codes) if code in _ORIENTATION_AXES[self.slice_axis]]
            if not axes:
                raise ValueError(f"{record.fixed}: cannot find the {self.slice_axis} axis in orientation {codes}; "
                                 f"pass slice_axis=0..2")
            record.slice_axis = axes[0]

    def _class_names(self, class_names: Sequence[str] | None, classes_json: str | Path | None,
                     has_labels: bool) -> tuple[str, ...]:
        if class_names is not None and classes_json is not None:
            raise ValueError("give class_names or classes_json, not both")
        if classes_json is not None:
            class_names = read_class_names(self._path(str(classes_json)))
        if class_names is None:
            if has_labels:
                raise ValueError(f"{self.csv_path} lists label maps: name their values 0..C-1 with "
                                 f"class_names=[\"background\", ...] or classes_json=FILE")
            return ("background",)
        names = tuple(class_names) if isinstance(class_names, (list, tuple)) else (class_names,)
        if len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"class_names must be >= 2 distinct non-empty strings (class 0 first), got {class_names!r}")
        return names

    # -- loading -----------------------------------------------------------------------------------------------
    def _scale(self, image: np.ndarray) -> np.ndarray:
        if self.intensity == "ct":
            return window_ct(image, self.hu_window)
        if self.intensity == "mr":
            return robust_minmax(image, self.percentiles)
        return image.astype(np.float32)

    def _target_grid(self, record: _ListedPair, shape: tuple[int, ...], affine: np.ndarray,
                     labels: np.ndarray | None) -> Grid:
        """The fixed grid, sliced (2D mode of 3D files), rescaled to ``spacing`` and cropped/padded to ``shape``."""
        grid, axis = Grid(tuple(shape), affine), record.slice_axis
        if axis is not None and record.file_ndim == 3:
            index = self.slice_index
            if index is None:
                extent = np.flatnonzero((labels > 0).any(axis=tuple(a for a in range(3) if a != axis))) \
                    if labels is not None else np.zeros(0)
                index = int((extent[0] + extent[-1]) // 2) if extent.size else (shape[axis] - 1) // 2
            if index >= shape[axis]:
                raise ValueError(f"slice_index {index} is outside {record.fixed} (size {shape[axis]} along axis {axis})")
            grid = slice_grid(grid, axis, index)
        return fit_plane(grid, [a for a in range(3) if a != axis], self.spacing, self.shape)

    def _keypoints(self, path: Path, affine: np.ndarray, ndim: int) -> np.ndarray:
        """Points ``[N, 3]`` in voxels of the image with ``affine``."""
        points = read_keypoints(path, ndim)
        points = np.pad(points, ((0, 0), (0, 3 - ndim)))
        if self.keypoint_units == "voxel":
            return points
        world = points @ image_io.LPS_TO_RAS.T if self.keypoint_units == "lps" else points
        return (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T

    def check_file(self, kind: str, path: Path, record: _ListedPair) -> None:
        """Read one file of ``record`` in its own format (through SimpleITK) with the checks of loading it."""
        if kind == "image":
            image_io.read_image(path, "image")
        elif kind == "labels":
            image_io.read_labels(path, self.num_classes)
        elif kind == "keypoints":
            read_keypoints(path, record.file_ndim)
        else:
            super().check_file(kind, path, record)

    def _load(self, record: _ListedPair) -> dict[str, Any]:
        fixed, affine_f = image_io.read_image(record.fixed, "fixed image")
        moving, affine_m = image_io.read_image(record.moving, "moving image")
        fixed_labels = moving_labels = None
        if record.fixed_labels is not None:
            fixed_labels = image_io.read_labels(record.fixed_labels, self.num_classes, "fixed label map")[0]
            moving_labels = image_io.read_labels(record.moving_labels, self.num_classes, "moving label map")[0]
        grid = self._target_grid(record, fixed.shape, affine_f, fixed_labels)
        out: dict[str, Any] = {"fixed": resample_volume(self._scale(fixed), affine_f, grid, order=1),
                               "moving": resample_volume(self._scale(moving), affine_m, grid, order=1)}
        if fixed_labels is not None:
            out["fixed_labels"] = resample_volume(fixed_labels, affine_f, grid, order=0)
            out["moving_labels"] = resample_volume(moving_labels, affine_m, grid, order=0)
        affine, plane = drop_axis(grid, record.slice_axis)
        if record.fixed_keypoints is not None:
            fixed_points = map_points(self._keypoints(record.fixed_keypoints, affine_f, record.file_ndim), affine_f,
                                      grid.affine)
            moving_points = map_points(self._keypoints(record.moving_keypoints, affine_m, record.file_ndim),
                                       affine_m, grid.affine)
            if len(fixed_points) != len(moving_points):
                raise ValueError(f"keypoint files {record.fixed_keypoints} and {record.moving_keypoints} differ in "
                                 f"point count ({len(fixed_points)} vs {len(moving_points)})")
            keep = points_inside(fixed_points, grid.shape, range(3)) & points_inside(moving_points, grid.shape, plane)
            out["fixed_keypoints"] = fixed_points[keep][:, plane]
            out["moving_keypoints"] = moving_points[keep][:, plane]
        if record.slice_axis is not None:
            for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
                if key in out:
                    out[key] = np.take(out[key], 0, axis=record.slice_axis)
        return make_item(spacing=voxel_spacing(grid.affine)[plane], affine=affine, pair_id=record.pair_id, **out)
