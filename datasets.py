"""Paired registration datasets: Learn2Reg NLST and Lung CT, ACDC cardiac MR, and the synthetic phantom.

A thin front of :mod:`hypermorph_spatially_adaptive.data` for scripts run from the repository root
(``import datasets``); the package is the code. ``get_dataset(name, root, split, **options)`` yields one dict per
pair (see :mod:`hypermorph_spatially_adaptive.data.registry`).
"""
from hypermorph_spatially_adaptive.data import (AFFINE_ATOL_MM, DEFAULT_HU_WINDOW, SPLITS, ACDCDataset, EmptySplitError,
                                                Grid, Learn2RegDataset, LungCTDataset, NLSTDataset, PairDataset,
                                                PhantomDataset, available_datasets, collate_pairs, crop_grid,
                                                get_dataset, make_item, map_points, read_keypoints,
                                                resample_displacement, resample_volume, rescale_grid, robust_minmax,
                                                slice_grid, voxel_spacing, window_ct)

__all__ = [
    "get_dataset",
    "available_datasets",
    "collate_pairs",
    "make_item",
    "PairDataset",
    "EmptySplitError",
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
    "SPLITS",
    "DEFAULT_HU_WINDOW",
    "AFFINE_ATOL_MM",
]
