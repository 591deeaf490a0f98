"""Learn2Reg paired layout (``ROOT/<PREFIX>_dataset.json`` and sibling folders): NLST and Lung CT.

:class:`Learn2RegDataset` checks files and headers when it is built and loads one pair per item onto the fixed
grid; :class:`NLSTDataset` and :class:`LungCTDataset` name the two layouts (their docstrings list the options).
The synthetic phantom uses the same reader (:mod:`.phantom_dataset`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from .grids import (Grid, drop_axis, fit_plane, map_points, points_inside, resample_displacement, resample_volume,
                    slice_grid, voxel_spacing)
from .pair_dataset import EmptySplitError, PairDataset, check_tuple, make_item
from .volume_io import (DEFAULT_HU_WINDOW, check_same_grid, keypoint_file_shape, load_displacement, load_image,
                        load_labels, load_mask, read_header, read_keypoints, same_affine, window_ct)

__all__ = ["Learn2RegDataset", "NLSTDataset", "LungCTDataset", "sibling_path"]


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


def sibling_path(image: Path, kind: str, suffix: str | None = None) -> Path:
    """``ROOT/imagesTr/X.nii.gz`` -> ``ROOT/<kind>Tr/X<suffix>`` (``Ts`` folders alike)."""
    folder = image.parent.name
    tail = folder[len("images"):] if folder.startswith("images") else "Tr"
    name = image.name if suffix is None else re.sub(r"\.nii(\.gz)?$", suffix, image.name)
    return image.parent.parent / f"{kind}{tail}" / name


def _header(path: Path, what: str, file_ndim: int) -> tuple[tuple[int, ...], np.ndarray]:
    """:func:`read_header`, with a 2D dataset's volume stored as one slice of a 3D file (``[H, W, 1]``, as the
    phantom writes it for ITK readers) taken as ``[H, W]``."""
    shape, affine = read_header(path, what)
    if file_ndim == 2 and len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    return shape, affine


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
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.json_path}: not valid JSON in UTF-8 ({error})") from None
        if not isinstance(self.description, dict):
            raise ValueError(f"{self.json_path}: expected a JSON object with the pair lists")
        file_ndim = self._file_ndim()
        if ndim is not None and ndim not in (2, 3):
            raise ValueError(f"ndim must be 2, 3 or None (the data's own {file_ndim}), got {ndim!r}")
        if ndim == 3 and file_ndim == 2:
            raise ValueError(f"ndim=3 was requested but {self.name} at {self.root} holds 2D images")
        self.ndim = file_ndim if ndim is None else int(ndim)
        self.spacing = check_tuple(spacing, self.ndim, "spacing", float)
        self.shape = check_tuple(shape, self.ndim, "shape", int)
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
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or "fixed" not in entry or "moving" not in entry:
                raise ValueError(f"{self.json_path}: entries of {key!r} need 'fixed' and 'moving', got {entry!r}")
            pairs.append(tuple(self._entry_path(entry[side], f"{key}[{number}].{side}")
                               for side in ("fixed", "moving")))
        return pairs

    def _entry_path(self, value: Any, where: str) -> Path:
        """A path of the description file: relative, and inside the dataset folder once normalised and once its
        links are followed."""
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{self.json_path}: {where} must be a file path relative to the dataset folder, got "
                             f"{value!r}")
        path = Path(os.path.normpath(self.root / value))
        if Path(value).is_absolute() or not path.is_relative_to(Path(os.path.normpath(self.root))):
            raise ValueError(f"{self.json_path}: {where} {value!r} leaves the dataset folder {self.root}; paths must "
                             f"be relative to it, without '..' out of it")
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"{self.json_path}: {where} {value!r} is a link that leaves the dataset folder "
                             f"{self.root} (to {path.resolve()}); copy the file into the folder or list your files "
                             f"in a pairs CSV (--dataset pairs)")
        return path

    def _split_entries(self) -> list[tuple[Path, Path]]:
        val, test = self._entries("registration_val"), self._entries("registration_test")
        overlap = set(val) & set(test)
        if overlap:
            raise ValueError(f"{self.json_path}: pairs listed for both validation and test: {sorted(overlap)}")
        if self.split == "val":
            return val
        if self.split == "test":
            if not test:
                raise EmptySplitError(f"split 'test' of {self.name} has no pairs in {self.json_path} "
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
        head_f, head_m = (_header(fixed, "fixed image", file_ndim), _header(moving, "moving image", file_ndim))
        for path, head in ((fixed, head_f), (moving, head_m)):
            if len(head[0]) != file_ndim:
                raise ValueError(f"{path}: expected a {file_ndim}D image, header shape {head[0]}")
        # Masks and keypoints are part of the training layout; for test images they are used when present.
        required = self.split != "test"
        for side, path, head in (("fixed", fixed, head_f), ("moving", moving, head_m)):
            mask = sibling_path(path, "masks")
            if required or mask.parent.is_dir():
                check_same_grid(mask, _header(mask, f"{side} mask", file_ndim), path, head)
                setattr(record, f"{side}_mask", mask)
            labels = self._label_path(path)
            if labels is not None:
                check_same_grid(labels, _header(labels, f"{side} label map", file_ndim), path, head)
                setattr(record, f"{side}_labels", labels)
        kp_fixed, kp_moving = sibling_path(fixed, "keypoints", ".csv"), sibling_path(moving, "keypoints", ".csv")
        if required or kp_fixed.parent.is_dir():
            (rows_f, cols_f), (rows_m, cols_m) = keypoint_file_shape(kp_fixed), keypoint_file_shape(kp_moving)
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
        shape, affine = read_header(path, "true displacement")
        ndim = record.file_ndim
        if shape not in (head_f[0] + (ndim,), head_f[0] + (1, ndim)) or not same_affine(affine, head_f[1]):
            raise ValueError(f"{path}: expected shape {head_f[0] + (ndim,)} and the affine of {record.fixed}, got "
                             f"shape {shape}")
        if head_m[0] != head_f[0] or not same_affine(head_m[1], head_f[1]):
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
        return fit_plane(grid, [a for a in range(3) if a != axis], self.spacing, self.shape)

    def _load(self, record: _L2RPair) -> dict[str, Any]:
        fixed, affine_f = load_image(record.fixed)
        moving, affine_m = load_image(record.moving)
        fixed_mask = moving_mask = None
        if record.fixed_mask is not None:
            fixed_mask, moving_mask = load_mask(record.fixed_mask)[0], load_mask(record.moving_mask)[0]
        if record.fixed_labels is not None:
            fixed_labels = load_labels(record.fixed_labels, self.num_classes)[0]
            moving_labels = load_labels(record.moving_labels, self.num_classes)[0]
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
        affine, plane = drop_axis(grid, record.slice_axis)
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
            keep = points_inside(fixed_points, grid.shape, range(3)) & points_inside(moving_points, grid.shape, plane)
            out["fixed_keypoints"] = fixed_points[keep][:, plane]
            out["moving_keypoints"] = moving_points[keep][:, plane]
        if record.displacement is not None:
            field = load_displacement(record.displacement)[0]
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
        return make_item(spacing=spacing, affine=affine, pair_id=record.pair_id, **out)


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
