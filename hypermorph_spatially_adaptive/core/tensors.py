"""Input validation and loss reduction shared by losses, regularizers and metrics.

Conventions: images ``[B, C, *S]``, fields ``[B, ndim, *S]`` in voxels (channel k = array axis k),
``ndim = len(S)`` in {2, 3}.

Two kinds of check: shapes, dtypes and counts (free: they read tensor metadata) and values (finite, in range: they
read the data, which on a GPU is a host-device synchronisation). The value checks run at the boundaries: public
functions check by default and take ``validate=False`` for callers that checked their inputs once already, such
as the training step (see :mod:`..stages.training.step`).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

__all__ = [
    "Parameter",
    "check_reduction",
    "reduce_loss",
    "check_field",
    "check_image",
    "check_spacing",
    "as_voxelwise",
    "all_finite",
]

#: A weight or Lame parameter: a float, one value per sample ``[B]`` or a voxelwise map ``[B, 1, *S]``.
Parameter = Union[float, torch.Tensor]

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`, else ValueError (checked before any work)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(values: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reduce a per-voxel loss map ``[B, 1, *S]``: ``none`` returns it, ``mean``/``sum`` over all elements."""
    if check_reduction(reduction) == "none":
        return values
    if reduction == "mean":
        # Same value as values.mean(), but the backward hands on a broadcast (stride-0) gradient instead of
        # materialising a full-size one, which fused backwards such as the elastic energy's exploit.
        return values.sum() / values.numel()
    return values.sum()


def all_finite(tensor: torch.Tensor) -> bool:
    """True if no element is NaN or infinite (one min/max pass: about 10x cheaper than ``isfinite().all()``)."""
    if tensor.numel() == 0:
        return True
    # aminmax propagates NaN, and an infinity shows up as the min or the max.
    return bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all())


def _spatial_ndim(tensor: torch.Tensor, name: str, layout: str, axes: str) -> int:
    """ndim of a tensor ``[B, C, *S]`` with 2 or 3 spatial axes; ValueError naming ``name`` and ``layout`` else."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
    ndim = tensor.dim() - 2
    if ndim not in (2, 3):
        raise ValueError(f"{name} must have shape {layout} with {axes}, got shape {tuple(tensor.shape)}")
    return ndim


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if not all_finite(tensor):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_field(field: torch.Tensor, name: str = "field", check_values: bool = True) -> int:
    """Validate a field ``[B, ndim, *S]`` (ndim 2 or 3, channels == ndim; finite unless ``check_values=False``);
    return ndim."""
    ndim = _spatial_ndim(field, name, "[B, ndim, *S]", "ndim 2 or 3")
    if field.shape[1] != ndim:
        raise ValueError(
            f"{name} must have ndim={ndim} channels for a {ndim}D grid (shape [B, {ndim}, *S]), "
            f"got {field.shape[1]} channels in shape {tuple(field.shape)}"
        )
    if check_values:
        _check_finite(field, name)
    return ndim


def check_image(image: torch.Tensor, name: str = "image", channels: int | None = None,
                check_values: bool = True) -> int:
    """Validate an image ``[B, C, *S]`` (2D or 3D, optional channel count; finite unless ``check_values=False``);
    return ndim."""
    ndim = _spatial_ndim(image, name, "[B, C, *S]", "2 or 3 spatial axes")
    if channels is not None and image.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s) [B, {channels}, *S], got shape {tuple(image.shape)}")
    if check_values and image.is_floating_point():
        _check_finite(image, name)
    return ndim


def check_spacing(spacing: Sequence[float] | torch.Tensor | None, ndim: int,
                  name: str = "spacing") -> tuple[float, ...]:
    """Return spacing (mm per voxel, one value per axis) as a tuple; ``None`` means 1 voxel = 1 unit."""
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().flatten().tolist()
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"{name} must have {ndim} values (one per axis, in mm), got {values}")
    if not all(s > 0 and s == s and s != float("inf") for s in values):
        raise ValueError(f"{name} must be finite and positive, got {values}")
    return values


def as_voxelwise(value: Parameter, like: torch.Tensor, name: str,
                 check_values: bool = True) -> torch.Tensor | float:
    """Bring a parameter to a form that broadcasts against a map ``[B, 1, *S]`` shaped like ``like``.

    Accepts a float (returned as is), a per-sample tensor ``[B]`` (returned as ``[B, 1, 1, ...]``) or a
    voxelwise map ``[B, 1, *S]``. Values must be finite and non-negative (a tensor's are not read with
    ``check_values=False``).
    """
    batch, spatial = like.shape[0], tuple(like.shape[2:])
    if not isinstance(value, torch.Tensor):
        value = float(value)
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"{name} must be a finite non-negative number, got {value}")
        return value
    if value.dim() == 0:
        out = value.reshape((1,) * like.dim())
    elif value.dim() == 1 and value.shape[0] in (1, batch):
        out = value.reshape((-1,) + (1,) * (like.dim() - 1))
    elif value.dim() == like.dim() and value.shape[0] in (1, batch) and value.shape[1] == 1 \
            and tuple(value.shape[2:]) == spatial:
        out = value
    else:
        raise ValueError(
            f"{name} must be a float, a per-sample tensor [B={batch}] or a voxelwise map "
            f"[B={batch}, 1, {', '.join(map(str, spatial))}], got shape {tuple(value.shape)}"
        )
    out = out.to(like.dtype)
    if check_values and out.numel():
        # One min/max pass and one sync: NaN fails ``>= 0``, -inf fails ``>= 0``, +inf fails ``< inf``.
        low, high = torch.aminmax(out)
        if not bool((low >= 0) & (high < float("inf"))):
            if not all_finite(out):
                raise ValueError(f"{name} contains NaN or infinite values")
            raise ValueError(f"{name} must be non-negative")
    return out
