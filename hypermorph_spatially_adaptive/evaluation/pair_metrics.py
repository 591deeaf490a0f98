"""Scores of one registered pair, shared by training validation, identification and inference.

Fields are ``[1, ndim, *S]`` or ``[ndim, *S]`` in voxels on the fixed grid; items are dataset dicts (see
:mod:`..data.registry`). Distances are in mm (spacing from the item).

Per-tissue scores group voxels, or keypoints, by the class of the fixed labels ``[*S]`` (int, ``0..C-1``); they take
the ``G`` fields of one pair at once (``[G, ndim, *S]``) and return float64 ``[G, C]``, NaN for a class with nothing
to average: :func:`class_means` (any voxel map), :func:`class_end_point_error` (EPE against the true displacement,
mm), :func:`class_strain` (mean ``|sym grad u|``, dimensionless) and :func:`class_tre` (keypoints grouped by the
fixed label at the fixed keypoint rounded to the nearest voxel; :func:`class_keypoints` groups them once for many
calls of :func:`keypoint_class_tre`). :func:`tissue_metrics` gives one pair's per-class columns
(:func:`tissue_columns`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..core.metrics import (determinant_folding_percent, determinant_sdlogj, dice, hd95_per_class,
                            jacobian_determinant, strain_magnitude, tre, warp_labels)
from ..core.tensors import check_spacing
from ..core.transform import sample_at_points

__all__ = ["pair_metrics", "end_point_error", "end_point_error_map", "nanmean", "TISSUE_METRICS", "tissue_columns",
           "tissue_metrics", "class_means", "class_end_point_error", "class_strain", "ClassKeypoints",
           "class_keypoints", "keypoint_class_tre", "class_tre"]

#: Per-class columns of :func:`tissue_metrics`, each followed by ``_<class name>``: mean EPE (mm) against the true
#: displacement, mean TRE (mm), mean strain magnitude of the field and of the true displacement.
TISSUE_METRICS = ("epe", "tre", "strain", "gt_strain")


def nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN when nothing is left (not a warning)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def end_point_error_map(displacement: torch.Tensor, truth: torch.Tensor,
                        spacing: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Euclidean distance in mm per voxel between fields ``[..., ndim, *S]`` and ``truth`` ``[ndim, *S]`` (voxels,
    component k scaled by ``spacing[k]``): float64 ``[..., *S]`` on the fields' device."""
    ndim = truth.shape[0]
    if truth.dim() != ndim + 1 or tuple(displacement.shape[displacement.dim() - ndim - 1:]) != tuple(truth.shape):
        raise ValueError(f"displacement [..., ndim, *S] and truth [ndim, *S] must agree, got shapes "
                         f"{tuple(displacement.shape)} and {tuple(truth.shape)}")
    scale = torch.tensor(check_spacing(spacing, ndim), dtype=torch.float64, device=displacement.device)
    error = (displacement.double() - truth.double().to(displacement.device)) * scale.view(-1, *([1] * ndim))
    return error.norm(dim=-ndim - 1)


def end_point_error(displacement: torch.Tensor, truth: torch.Tensor, spacing: Sequence[float],
                    mask: torch.Tensor | None = None) -> float:
    """Mean Euclidean distance in mm between two fields ``[ndim, *S]`` (voxels), inside ``mask`` ``[*S]`` if given."""
    error = end_point_error_map(displacement, truth, spacing)
    if mask is not None:
        error = error[mask.to(error.device).bool()]
    return float(error.mean())


def _grouped_means(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of ``values`` ``[G, N]`` over each group of ``groups`` ``[N]`` (``0..num_groups-1``): float64
    ``[G, num_groups]``, NaN for an empty group."""
    groups = groups.to(values.device)
    sums = torch.zeros(values.shape[0], num_groups, dtype=torch.float64, device=values.device)
    sums.index_add_(1, groups, values.to(torch.float64))
    counts = torch.bincount(groups, minlength=num_groups)[:num_groups].to(torch.float64)
    return torch.where(counts > 0, sums / counts.clamp(min=1.0), torch.full_like(sums, math.nan))


def class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int, validate: bool = True) -> torch.Tensor:
    """Mean of voxel maps ``values`` ``[G, *S]`` inside each class of ``labels`` ``[*S]`` (integers ``0..C-1``):
    float64 ``[G, C]``, NaN for a class without voxels. ``validate=False`` skips the label range check (a
    host-device synchronisation on a GPU) for labels checked before."""
    if values.dim() != labels.dim() + 1 or tuple(values.shape[1:]) != tuple(labels.shape):
        raise ValueError(f"values must have shape [G, *S] with labels [*S], got {tuple(values.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    if validate and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return _grouped_means(values.reshape(values.shape[0], -1), labels.reshape(-1).long(), num_classes)


def class_end_point_error(displacement: torch.Tensor, truth: torch.Tensor, spacing: Sequence[float] | torch.Tensor,
                          labels: torch.Tensor, num_classes: int, validate: bool = True) -> torch.Tensor:
    """Mean end-point error in mm inside each class of ``labels`` ``[*S]`` of fields ``[G, ndim, *S]`` against
    ``truth`` ``[ndim, *S]`` (voxels; :func:`end_point_error_map`): float64 ``[G, C]``."""
    return class_means(end_point_error_map(displacement, truth, spacing), labels, num_classes, validate)


def class_strain(displacement: torch.Tensor, spacing: Sequence[float] | torch.Tensor, labels: torch.Tensor,
                 num_classes: int, validate: bool = True) -> torch.Tensor:
    """Mean strain magnitude ``|sym grad u|`` (Frobenius norm of the small-strain tensor, dimensionless;
    :func:`~..core.metrics.strain_magnitude` with ``spacing`` in mm) inside each class of ``labels`` ``[*S]`` of
    fields ``[G, ndim, *S]`` (voxels): float64 ``[G, C]``."""
    return class_means(strain_magnitude(displacement.double(), spacing), labels, num_classes, validate)


@dataclass(frozen=True)
class ClassKeypoints:
    """Keypoint pairs grouped by class, on one device: ``fixed``, ``moving`` float64 ``[N, ndim]`` (voxels, N > 0),
    ``scale`` the spacing ``[ndim]`` (mm) and ``classes`` ``[N]`` the fixed label at each fixed point. Build with
    :func:`class_keypoints`."""

    fixed: torch.Tensor
    moving: torch.Tensor
    scale: torch.Tensor
    classes: torch.Tensor


def class_keypoints(fixed_keypoints: torch.Tensor, moving_keypoints: torch.Tensor, fixed_labels: torch.Tensor,
                    spacing: Sequence[float] | torch.Tensor, device: torch.device | str | None = None
                    ) -> ClassKeypoints | None:
    """Keypoints ``[N, ndim]`` (voxels) grouped by the fixed label ``[*S]`` at the fixed point rounded to the nearest
    voxel (clamped to the image), on ``device`` (default: the labels'); None without keypoints."""
    device = fixed_labels.device if device is None else torch.device(device)
    p = fixed_keypoints.to(device, torch.float64)
    if p.dim() != 2 or p.shape[1] != fixed_labels.dim() or tuple(moving_keypoints.shape) != tuple(p.shape):
        raise ValueError(f"fixed_keypoints and moving_keypoints must have shape [N, {fixed_labels.dim()}] to match "
                         f"labels {tuple(fixed_labels.shape)}, got {tuple(fixed_keypoints.shape)} and "
                         f"{tuple(moving_keypoints.shape)}")
    if p.shape[0] == 0:
        return None
    voxel = p.round().long()
    for axis, size in enumerate(fixed_labels.shape):
        voxel[:, axis].clamp_(0, size - 1)
    scale = torch.tensor(check_spacing(spacing, p.shape[1]), dtype=torch.float64, device=device)
    return ClassKeypoints(p, moving_keypoints.to(device, torch.float64), scale,
                          fixed_labels.to(device)[tuple(voxel.T)].long())


def keypoint_class_tre(displacement: torch.Tensor, keypoints: ClassKeypoints | None,
                       num_classes: int) -> torch.Tensor:
    """Mean TRE per class in mm of fields ``[G, ndim, *S]``: float64 ``[G, C]``, NaN for a class without points
    (every class without keypoints). Per point ``|(p + u(p) - q) * spacing|`` as ``core.metrics.tre`` (u linearly
    interpolated, border value outside)."""
    batch, ndim, shape = displacement.shape[0], displacement.shape[1], displacement.shape[2:]
    if keypoints is None:
        return torch.full((batch, num_classes), math.nan, dtype=torch.float64, device=displacement.device)
    p, q = keypoints.fixed, keypoints.moving
    # All G fields are sampled in one call as G * ndim channels: channel g * ndim + k is field g, axis k.
    u = sample_at_points(displacement.to(torch.float64).reshape(batch * ndim, *shape), p).view(-1, batch, ndim)
    distance = ((p[:, None] + u - q[:, None]) * keypoints.scale).norm(dim=-1).T  # [G, N]
    return _grouped_means(distance, keypoints.classes, num_classes)


def class_tre(displacement: torch.Tensor, fixed_keypoints: torch.Tensor, moving_keypoints: torch.Tensor,
              fixed_labels: torch.Tensor, spacing: Sequence[float] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean TRE per class in mm for many fields at once: ``[G, ndim, *S]`` -> float64 ``[G, C]``.

    Keypoints ``[N, ndim]`` (voxels) are grouped by the fixed label ``[*S]`` at the fixed keypoint rounded to the
    nearest voxel (:func:`class_keypoints`); a class without keypoints is NaN. Per point the error is
    ``|(p + u(p) - q) * spacing|`` as in ``core.metrics.tre``.
    """
    keypoints = class_keypoints(fixed_keypoints, moving_keypoints, fixed_labels, spacing, displacement.device)
    return keypoint_class_tre(displacement, keypoints, num_classes)


def tissue_columns(class_names: Sequence[str]) -> list[str]:
    """The per-class columns of :func:`tissue_metrics` in order: ``epe_<class>`` for every class, then ``tre_``,
    ``strain_`` and ``gt_strain_`` (:data:`TISSUE_METRICS`)."""
    return [f"{metric}_{name}" for metric in TISSUE_METRICS for name in class_names]


def tissue_metrics(displacement: torch.Tensor, item: dict[str, Any], class_names: Sequence[str]) -> dict[str, float]:
    """One pair's per-class scores (:func:`tissue_columns`), classes taken from the item's ``fixed_labels``.

    ``displacement`` ``[ndim, *S]`` or ``[1, ndim, *S]`` (voxels). ``epe_<c>``: :func:`class_end_point_error`
    against ``gt_displacement``; ``tre_<c>``: :func:`class_tre`; ``strain_<c>``, ``gt_strain_<c>``:
    :func:`class_strain` of the field and of ``gt_displacement``. NaN where the item lacks the input (every column
    without fixed labels) or the class has no voxel or keypoint.
    """
    field = displacement.detach()
    if field.dim() == len(item["fixed"].shape):  # [ndim, *S]
        field = field.unsqueeze(0)
    num_classes = len(class_names)
    nothing = torch.full((num_classes,), math.nan, dtype=torch.float64)
    values = {metric: nothing for metric in TISSUE_METRICS}
    if "fixed_labels" in item:
        labels = item["fixed_labels"][0].to(field.device)
        spacing = tuple(float(s) for s in item["spacing"])
        values["strain"] = class_strain(field, spacing, labels, num_classes)[0]
        if "gt_displacement" in item:
            truth = item["gt_displacement"].to(field.device)
            values["epe"] = class_end_point_error(field, truth, spacing, labels, num_classes, validate=False)[0]
            values["gt_strain"] = class_strain(truth[None], spacing, labels, num_classes, validate=False)[0]
        if len(item.get("fixed_keypoints", ())):
            values["tre"] = class_tre(field, item["fixed_keypoints"], item["moving_keypoints"], labels, spacing,
                                      num_classes)[0]
    return {f"{metric}_{name}": float(value) for metric in TISSUE_METRICS
            for name, value in zip(class_names, values[metric].tolist())}


def pair_metrics(displacement: torch.Tensor, item: dict[str, Any], class_names: Sequence[str],
                 hd95: bool = False, jacobian: torch.Tensor | None = None,
                 warped_labels: torch.Tensor | None = None) -> dict[str, float]:
    """Dice (mean over foreground and per class), TRE (mm), SDlogJ, folding (%), optional HD95 and EPE (mm).

    ``jacobian`` (determinant map ``[*S]``) and ``warped_labels`` (``[*S]``, the moving labels warped by this field):
    pass them when the caller already has them, so that they are computed once.

    Keys: ``dice_mean``, ``dice_<class>`` for every class, ``tre_mm``, ``sdlogj``, ``folding_percent``, ``hd95_mm``
    (when ``hd95``), ``epe_mm`` (when the item has ``gt_displacement``). Absent inputs give NaN.
    """
    field = displacement.detach()
    if field.dim() == len(item["fixed"].shape):  # [ndim, *S]
        field = field.unsqueeze(0)
    spacing = tuple(float(s) for s in item["spacing"])
    num_classes = len(class_names)
    metrics: dict[str, float] = {"dice_mean": float("nan")}
    metrics.update({f"dice_{name}": float("nan") for name in class_names})
    if "fixed_labels" in item and "moving_labels" in item:
        fixed_labels = item["fixed_labels"].to(field.device).unsqueeze(0)
        if warped_labels is None:
            warped_labels = warp_labels(item["moving_labels"].to(field.device).unsqueeze(0), field)
        else:
            warped_labels = warped_labels.to(field.device).reshape(fixed_labels.shape)
        scores = dice(fixed_labels, warped_labels, num_classes)
        metrics["dice_mean"] = float(scores.mean.reshape(-1)[0])
        for name, value in zip(class_names, scores.per_class.reshape(-1).tolist()):
            metrics[f"dice_{name}"] = value
        if hd95:
            per_class = hd95_per_class(fixed_labels[0, 0].cpu(), warped_labels[0, 0].cpu(),
                                                    list(range(1, num_classes)), spacing)
            metrics["hd95_mm"] = nanmean(list(per_class))
    elif hd95:
        metrics["hd95_mm"] = float("nan")
    metrics["tre_mm"] = float("nan")
    if "fixed_keypoints" in item and "moving_keypoints" in item and len(item["fixed_keypoints"]):
        distances = tre(item["fixed_keypoints"].to(field.device), item["moving_keypoints"].to(field.device),
                                     field[0], spacing)
        metrics["tre_mm"] = float(distances.mean())
    det = (jacobian_determinant(field) if jacobian is None else jacobian.to(field.device)).reshape(
        1, *field.shape[2:])
    metrics["sdlogj"] = float(determinant_sdlogj(det)[0])
    metrics["folding_percent"] = float(determinant_folding_percent(det)[0])
    if "gt_displacement" in item:
        mask = item["fixed_labels"][0] > 0 if "fixed_labels" in item else None
        metrics["epe_mm"] = end_point_error(field[0], item["gt_displacement"], spacing, mask)
    return metrics
