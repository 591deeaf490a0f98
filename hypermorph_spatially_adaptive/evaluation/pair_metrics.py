"""Scores of one registered pair, shared by training validation, identification and inference.

Fields are ``[1, ndim, *S]`` or ``[ndim, *S]`` in voxels on the fixed grid; items are dataset dicts (see
:mod:`..data.registry`). Distances are in mm (spacing from the item).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..core.metrics import (determinant_folding_percent, determinant_sdlogj, dice, hd95_per_class,
                            jacobian_determinant, tre, warp_labels)

__all__ = ["pair_metrics", "end_point_error", "nanmean"]


def nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN when nothing is left (not a warning)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def end_point_error(displacement: torch.Tensor, truth: torch.Tensor, spacing: Sequence[float],
                    mask: torch.Tensor | None = None) -> float:
    """Mean Euclidean distance in mm between two fields ``[ndim, *S]`` (voxels), inside ``mask`` ``[*S]`` if given."""
    scale = torch.as_tensor(spacing, dtype=torch.float64, device=displacement.device)
    scale = scale.view(-1, *([1] * (displacement.dim() - 1)))
    error = ((displacement.double() - truth.double().to(displacement.device)) * scale).norm(dim=0)
    if mask is not None:
        error = error[mask.to(error.device).bool()]
    return float(error.mean())


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
