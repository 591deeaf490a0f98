"""The dataset registry: :func:`get_dataset` by name, :func:`available_datasets`, and :func:`collate_pairs`.

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
``p`` corresponds to ``p + u(p)`` for the true displacement ``u``.

Preprocessing is a change of grid followed by one interpolation per volume (images linear, labels and masks
nearest); see :func:`rescale_grid` (``spacing=``), :func:`crop_grid` (``shape=``) and :func:`slice_grid` (2D mode).
Keypoints and the phantom's true displacement go through the same voxel maps. Nothing is downloaded: point
``root`` at the folder you unpacked. Files and headers are checked when a dataset is built, and
:func:`get_dataset` reads every file once (``scan``: readable, finite, labels in range, naming the bad file);
the pair's arrays are built in ``__getitem__``, whose readers check the files again (optionally cached in memory
with ``cache=True``; each DataLoader worker keeps its own cache).

One module per concept in this sub-package: :mod:`.grids` (geometry and resampling), :mod:`.volume_io` (NIfTI
and keypoint files, intensity scaling), :mod:`.pair_dataset` (the base class and the item dict), :mod:`.learn2reg`
(NLST, Lung CT), :mod:`.phantom_dataset`, :mod:`.acdc`, :mod:`.pair_list` (your own pairs listed in a CSV, any
format through :mod:`.image_io`); :mod:`.nifti_io` reads an explicit pair of files.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import torch

from .acdc import ACDCDataset
from .learn2reg import LungCTDataset, NLSTDataset
from .pair_dataset import PairDataset
from .pair_list import PairListDataset
from .phantom_dataset import PhantomDataset

__all__ = ["get_dataset", "available_datasets", "collate_pairs"]

_DATASETS: dict[str, type[PairDataset]] = {
    "nlst": NLSTDataset,
    "lungct": LungCTDataset,
    "acdc": ACDCDataset,
    "phantom": PhantomDataset,
    "pairs": PairListDataset,
}


def available_datasets() -> tuple[str, ...]:
    """Names accepted by :func:`get_dataset`."""
    return tuple(_DATASETS)


def get_dataset(name: str, root: str | Path, split: str = "train", scan: bool = True, **options: Any) -> PairDataset:
    """The ``split`` (``train``/``val``/``test``) of dataset ``name`` stored under ``root``, with its ``options``.

    ``scan`` reads every file of the split once (:meth:`~.pair_dataset.PairDataset.scan`), so that a truncated
    file or NaN voxels fail here, naming the file, rather than at some step of a run; without it each pair's
    files are checked as the pair is loaded. Raises ValueError for an unknown name or option (listing the valid
    ones) and for bad data (see the classes).
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
        what = "the pairs CSV (or its folder)" if key == "pairs" else f"the folder of the {key} dataset"
        raise ValueError(f"root must be {what}, got None")
    dataset = cls(root, split, **options)
    if scan:
        dataset.scan()
    return dataset


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
