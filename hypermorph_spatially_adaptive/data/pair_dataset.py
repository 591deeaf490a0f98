"""The base of every paired dataset: split, pair list, ``pairs=`` restriction, cache, and the item dict.

Subclasses (:mod:`.learn2reg`, :mod:`.phantom_dataset`, :mod:`.acdc`) fill the pair records and load one pair
as spatial arrays ``[*S]``; :func:`make_item` turns those into the item dict described in :mod:`.registry`.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .volume_io import check_file

__all__ = ["SPLITS", "RECORD_FILES", "EmptySplitError", "PairDataset", "make_item", "check_tuple"]

SPLITS = ("train", "val", "test")
#: Attributes of a pair record that name its files, and the kind of each file (see :func:`~.volume_io.check_file`).
RECORD_FILES = {"fixed": "image", "moving": "image", "fixed_labels": "labels", "moving_labels": "labels",
                "fixed_mask": "mask", "moving_mask": "mask", "fixed_keypoints": "keypoints",
                "moving_keypoints": "keypoints", "displacement": "displacement"}
# Files :meth:`PairDataset.scan` found good in this process: (path, kind, classes, size, mtime).
_CHECKED: set[tuple] = set()


def _record_files(record: Any) -> list[tuple[str, Path]]:
    return [(kind, Path(getattr(record, attribute))) for attribute, kind in RECORD_FILES.items()
            if getattr(record, attribute, None) is not None]


class EmptySplitError(ValueError):
    """The requested split exists in the dataset's layout but holds no pairs (e.g. a dataset written without
    validation pairs). Any other problem with a dataset is a plain ValueError or FileNotFoundError."""


class PairDataset(Dataset):
    """Common machinery: pair list, ``pairs=`` restriction, optional cache, ``describe()``.

    Subclasses fill ``self._pairs`` (records with a ``pair_id`` and their files as the attributes of
    :data:`RECORD_FILES`) and implement ``_load(record) -> dict``. :meth:`scan` reads every file once.
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
            raise EmptySplitError(f"split {self.split!r} of {self.name} ({source}) has no pairs")

    def __len__(self) -> int:
        return len(self._pairs)

    def scan(self) -> None:
        """Read and check every file of every pair (readable, finite values, labels in ``0..C-1``, keypoints):
        ValueError naming the first bad file. A file checked before and unchanged since (same size and
        modification time) is not read again in this process."""
        for record in self._pairs:
            for kind, path in _record_files(record):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    raise FileNotFoundError(f"{kind} file not found: {path}") from None
                key = (str(path.resolve()), kind, self.num_classes, stat.st_size, stat.st_mtime_ns)
                if key not in _CHECKED:
                    self.check_file(kind, path, record)
                    _CHECKED.add(key)

    def check_file(self, kind: str, path: Path, record: Any) -> None:
        """Read one file of ``record`` with this dataset's reader and its checks (:func:`~.volume_io.check_file`):
        ValueError naming the file when it is unreadable or holds wrong values."""
        check_file(kind, path, self.num_classes, ndim=getattr(record, "file_ndim", self.ndim))

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

    def fixed_file(self, index: int) -> Path:
        """The fixed image file (or DICOM series folder) of pair ``index``: outputs written "in the fixed image's
        format" take its format."""
        return Path(self._pairs[index].fixed)

    def with_label_folder(self, folder: str | Path) -> "PairDataset":
        """A copy that reads every label map from ``folder`` (same file names) instead of its own files.

        For choosing with other labels (e.g. automatic segmentations) than those that score; the labels go through
        exactly this dataset's preprocessing. Raises ValueError naming the folder for missing files.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"label folder not found: {folder}")
        records = []
        for record in self._pairs:
            paths = {key: getattr(record, key, None) for key in ("fixed_labels", "moving_labels")}
            if None in paths.values():
                raise ValueError(f"{folder}: pair {record.pair_id} of the {self.name} dataset has no label files "
                                 f"whose names the folder could match")
            replaced = {key: folder / path.name for key, path in paths.items()}
            missing = [str(path) for path in replaced.values() if not path.is_file()]
            if missing:
                raise ValueError(f"{folder}: missing {missing} (named like the dataset's label files)")
            records.append(dataclasses.replace(record, **replaced))
        relabelled = copy.copy(self)
        relabelled._pairs, relabelled._cache = records, {}
        return relabelled

    def describe(self) -> str:
        """Name, root, split, size, dimension, classes, options and the class documentation."""
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        doc = inspect.cleandoc(type(self).__doc__ or "")
        return (f"{self.name} dataset at {self.root}, split {self.split!r}: {len(self)} pairs, {self.ndim}D, "
                f"{self.num_classes} classes {self.class_names}\noptions: {options}\n\n{doc}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, pairs={len(self)})"


def make_item(fixed: np.ndarray, moving: np.ndarray, spacing: Sequence[float], affine: np.ndarray, pair_id: str,
              fixed_labels: np.ndarray | None = None, moving_labels: np.ndarray | None = None,
              fixed_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None,
              fixed_keypoints: np.ndarray | None = None, moving_keypoints: np.ndarray | None = None,
              gt_displacement: np.ndarray | None = None) -> dict[str, Any]:
    """Assemble an item dict with the documented dtypes; arrays are the spatial arrays ``[*S]``.

    Images and masks become float32 ``[1, *S]``, labels int64 ``[1, *S]``, keypoints float32 ``[N, ndim]``
    (voxels), ``gt_displacement`` float32 ``[ndim, *S]`` (voxels), ``spacing`` float64 ``[ndim]`` (mm) and
    ``affine`` float64 ``[4, 4]``. Labels, masks and keypoints are kept only when both sides are given.
    """
    def image(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)[None])

    if min(np.shape(fixed)) < 2:
        raise ValueError(f"pair {pair_id}: the fixed image is {'x'.join(map(str, np.shape(fixed)))} voxels once "
                         f"read and preprocessed; registration needs at least 2 voxels along every axis")

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


def check_tuple(value: Any, length: int, name: str, kind: type) -> tuple | None:
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
