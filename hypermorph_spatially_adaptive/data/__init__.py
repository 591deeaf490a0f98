"""Data: paired registration datasets (Learn2Reg NLST and Lung CT, ACDC, the synthetic phantom, your own pairs listed
in a CSV), their geometry and files (NIfTI through nibabel, any ITK format through SimpleITK), an explicit pair of
files, and the phantom generator (:mod:`.phantom`).

Every dataset yields one dict per pair (see :mod:`.registry`): images ``[1, *S]`` float32 in [0, 1], labels
``[1, *S]`` int64, keypoints ``[N, ndim]`` in voxels, ``spacing`` in mm and the fixed image's ``affine``. This
sub-package imports :mod:`..core` only (the phantom generator warps with it), never :mod:`..models`.
"""
from .acdc import ACDCDataset
from .grids import Grid, crop_grid, map_points, resample_displacement, resample_volume, rescale_grid, slice_grid, \
    voxel_spacing
from .learn2reg import Learn2RegDataset, LungCTDataset, NLSTDataset
from .pair_dataset import SPLITS, EmptySplitError, PairDataset, make_item
from .pair_list import PairListDataset
from .phantom_dataset import PhantomDataset
from .registry import available_datasets, collate_pairs, get_dataset
from .volume_io import AFFINE_ATOL_MM, DEFAULT_HU_WINDOW, read_keypoints, robust_minmax, window_ct

__all__ = [
    "get_dataset",
    "available_datasets",
    "collate_pairs",
    "make_item",
    "PairDataset",
    "EmptySplitError",
    "SPLITS",
    "Learn2RegDataset",
    "NLSTDataset",
    "LungCTDataset",
    "PhantomDataset",
    "ACDCDataset",
    "PairListDataset",
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
    "DEFAULT_HU_WINDOW",
    "AFFINE_ATOL_MM",
]
