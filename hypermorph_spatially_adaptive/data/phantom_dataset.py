"""The synthetic phantom written by ``phantom.py``, read through the Learn2Reg layout with prefix ``PHANTOM``."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .learn2reg import Learn2RegDataset, sibling_path
from .volume_io import DEFAULT_HU_WINDOW

__all__ = ["PhantomDataset"]


class PhantomDataset(Learn2RegDataset):
    """Synthetic CT-like phantom written by ``phantom.py`` (2D or 3D) with a known true displacement.

    Layout (the NLST layout with prefix ``PHANTOM``)::

        ROOT/PHANTOM_dataset.json               ndim, spacing, labels, pair lists, materials, ...
        ROOT/imagesTr/PHANTOM_XXXX_000N.nii.gz     fixed (0000) and moving (0001), HU
        ROOT/masksTr/   ROOT/labelsTr/          body masks, tissue labels 0..C-1 (same names)
        ROOT/keypointsTr/PHANTOM_XXXX_000N.csv     corresponding points, voxel coordinates
        ROOT/groundtruthTr/disp_XXXX_XXXX.nii.gz   true displacement [*S, ndim], voxels, fixed grid

    Classes come from the JSON ``labels`` (``background, soft_tissue, lung, bone, liver``). Splits: the three
    JSON lists (disjoint). ``gt_displacement`` ``[ndim, *S]`` (voxels of the returned grid) satisfies
    ``moving(x + u(x)) = fixed(x)``; under ``spacing`` it is resampled and divided by the per-axis scale, under
    ``shape`` it is cropped (0 where padded). ``ndim`` defaults to the files' own; ``ndim=2`` of a 3D phantom
    takes a slice as for NLST (the out-of-plane component of the displacement is dropped). Intensities as NLST.
    """

    name = "phantom"
    prefix = "PHANTOM"
    json_name = "PHANTOM_dataset.json"
    has_displacement = True

    def __init__(self, root: str | Path, split: str = "train", *, ndim: int | None = None,
                 spacing: Sequence[float] | None = None, shape: Sequence[int] | None = None,
                 hu_window: Sequence[float] = DEFAULT_HU_WINDOW, mask_images: bool = False,
                 slice_axis: str | int = "coronal", slice_index: int | None = None,
                 pairs: Sequence[str] | None = None, cache: bool = False) -> None:
        super().__init__(root, split, ndim=ndim, spacing=spacing, shape=shape, hu_window=hu_window,
                         mask_images=mask_images, slice_axis=slice_axis, slice_index=slice_index, pairs=pairs,
                         cache=cache)
        self.options.pop("labels_dir", None)

    def _file_ndim(self) -> int:
        ndim = self.description.get("ndim")
        if ndim not in (2, 3):
            raise ValueError(f"{self.json_path}: 'ndim' must be 2 or 3, got {ndim!r}")
        return int(ndim)

    def _class_names(self, class_names: Sequence[str] | None) -> tuple[str, ...]:
        labels = self.description.get("labels")
        try:
            names = tuple(labels[str(i)] for i in range(len(labels)))
        except (KeyError, TypeError):
            raise ValueError(f"{self.json_path}: 'labels' must map '0'..'C-1' to class names, got {labels!r}") \
                from None
        if len(names) < 2:
            raise ValueError(f"{self.json_path}: 'labels' needs at least 2 classes, got {labels!r}")
        return names

    def _label_path(self, image: Path) -> Path:
        return sibling_path(image, "labels")
