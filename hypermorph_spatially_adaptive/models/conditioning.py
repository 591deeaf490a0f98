"""How a spatially adaptive model learns where each tissue is: its conditioning variants.

A spatial model receives one parameter set per tissue class, ``hyper`` ``[B, P]`` with ``P = k C`` (``k`` values
per class: ``lam, mu`` for the elastic regularizer, all lambdas first; ``h`` for diffusion). The variants differ in
how those values reach the voxels of their class:

- ``vector`` (the paper): the hypernetwork maps the whole vector to kernels shared by every voxel; the network must
  find each tissue from the image intensities alone.
- ``maps``: as ``vector``, plus the voxelwise parameter maps (``lam(x)``, ``mu(x)`` from the fixed labels) as
  extra input channels of the U-Net.
- ``tissue``: the hypernetwork maps one class's parameter set to kernels, and every voxel is convolved with the
  kernels of its own class (class fractions on the coarser grids of the U-Net). A class's values then act where
  that class is by construction, and a vector whose classes share one set is the global model exactly.

``maps`` and ``tissue`` need the fixed image's labels ``[B, 1, *S]`` (int64, ``0..C-1``) in every forward pass,
also at inference; the model's config records the variant (``conditioning``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CONDITIONINGS", "NEEDS_LABELS", "class_parameter_sets", "parameter_maps", "class_fractions",
           "fraction_pyramid"]

CONDITIONINGS = ("vector", "maps", "tissue")
#: Variants that need the fixed image's labels in every forward pass.
NEEDS_LABELS = ("maps", "tissue")


def class_parameter_sets(hyper: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class parameter sets ``[B, C, k]`` of vectors ``[B, k C]`` laid out kind by kind (all lambdas, then all
    mus): ``sets[b, c] = (hyper[b, c], hyper[b, C + c], ...)``."""
    batch, length = hyper.shape
    return hyper.view(batch, length // num_classes, num_classes).transpose(1, 2)


def parameter_maps(hyper: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Voxelwise parameter maps ``[B, k, *S]`` (for the elastic vector: ``lam(x)``, ``mu(x)``) of vectors ``[B, k C]``
    and labels ``[B or 1, 1, *S]`` with values ``0..C-1``."""
    batch, kinds = hyper.shape[0], hyper.shape[1] // num_classes
    index = labels.reshape(labels.shape[0], 1, -1).expand(batch, kinds, -1)
    values = hyper.view(batch, kinds, num_classes)
    return torch.gather(values, 2, index).view(batch, kinds, *labels.shape[2:])


def class_fractions(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot class maps ``[B, C, *S]`` of labels ``[B, 1, *S]`` (values ``0..C-1``)."""
    return F.one_hot(labels[:, 0], num_classes).movedim(-1, 1).to(dtype)


def fraction_pyramid(fractions: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``fractions`` ``[B, C, *S]`` and its 2x average poolings: entry k is ``[B, C, *S / 2^k]``, k = 0..levels
    (every size divisible by ``2 ** levels``). Each entry still sums to 1 over the classes."""
    pool = F.avg_pool2d if fractions.dim() == 4 else F.avg_pool3d
    pyramid = [fractions]
    for _ in range(levels):
        pyramid.append(pool(pyramid[-1], 2))
    return pyramid
