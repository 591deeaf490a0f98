"""ACDC cine MR (Automated Cardiac Diagnosis Challenge): end-diastole to end-systole, 2D slices or 3D volumes.

See :class:`ACDCDataset` for the layout, classes, splits and preprocessing.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .grids import Grid, crop_grid, drop_axis, map_points, rescale_grid, resample_volume, slice_grid, voxel_spacing
from .pair_dataset import PairDataset, check_tuple, make_item
from .volume_io import check_same_grid, load_image, load_labels, read_header, robust_minmax

__all__ = ["ACDCDataset"]


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
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"ACDC patient description {path}: not UTF-8 text ({error})") from None
    info = {}
    for line in text.splitlines():
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
        self.spacing = check_tuple(spacing, 2, "spacing", float)
        self.shape = check_tuple(shape, 2, "shape", int)
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
            headers[key] = read_header(image, f"{key} frame")
            if len(headers[key][0]) != 3:
                raise ValueError(f"{image}: expected a 3D frame [H, W, slices], header shape {headers[key][0]}")
            check_same_grid(labels, read_header(labels, f"{key} labels"), image, headers[key])
        check_same_grid(paths["ES"][0], headers["ES"], paths["ED"][0], headers["ED"])
        args = (patient.name, paths["ED"][0], paths["ES"][0], paths["ED"][1], paths["ES"][1])
        if self.ndim == 3:
            return [_ACDCPair(*args, slice_index=None)]
        labels_ed = load_labels(paths["ED"][1], self.num_classes)[0]
        labels_es = load_labels(paths["ES"][1], self.num_classes)[0]
        candidates = _complete_slices(labels_ed, labels_es, self.num_classes)
        if not candidates:
            raise ValueError(f"{paths['ED'][1]} and {paths['ES'][1]}: no slice contains every class "
                             f"{self.class_names[1:]} in both frames; exclude {patient.name} with pairs=")
        if self.slices == "all":
            return [_ACDCPair(f"{patient.name}_z{z:02d}", *args[1:], slice_index=z) for z in candidates]
        centre = (candidates[0] + candidates[-1]) / 2.0
        return [_ACDCPair(*args, slice_index=min(candidates, key=lambda z: (abs(z - centre), z)))]

    def _load(self, record: _ACDCPair) -> dict[str, Any]:
        fixed, affine_f = load_image(record.fixed)
        moving, affine_m = load_image(record.moving)
        fixed_labels = load_labels(record.fixed_labels, self.num_classes)[0]
        moving_labels = load_labels(record.moving_labels, self.num_classes)[0]
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
        affine, plane = drop_axis(grid, axis)
        if axis is not None:
            out = {key: value[..., 0] for key, value in out.items()}
        return make_item(spacing=voxel_spacing(grid.affine)[plane], affine=affine, pair_id=record.pair_id, **out)
