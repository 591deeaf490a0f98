"""Scoring of grid points for parameter identification: per-class Dice, TRE and EPE of many displacements at once.

:func:`evaluate_pair` runs the global model once per chunk of grid points (images expanded to ``[g, 1, *S]``,
parameters ``[g, 2]``) and scores every displacement with :func:`score_displacements`: Dice per class ``[G, C]`` of
the nearest-warped moving labels, TRE per class ``[G, C]`` in mm (keypoints grouped by the fixed label at their
rounded position, :func:`~...evaluation.pair_metrics.keypoint_class_tre`) and, where the item has the true
displacement, the mean end-point error per class ``[G, C]`` in mm
(:func:`~...evaluation.pair_metrics.class_end_point_error`). The pair's labels, keypoints and true field are
prepared once (:func:`scoring_targets`) for all chunks. Fields ``[G, ndim, *S]`` in voxels on the fixed grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...core.metrics import dice
from ...core.transform import warp
from ...evaluation.pair_metrics import ClassKeypoints, class_end_point_error, class_keypoints, keypoint_class_tre

__all__ = ["ScoringTargets", "scoring_targets", "score_displacements", "evaluate_pair",
           "default_grid_batch"]


def default_grid_batch(device: torch.device | str) -> int:
    """Grid points per forward pass when none is given: 16 on a GPU, 4 on the CPU.

    On a GPU one point per pass leaves it idle (2D 128x128 on an H200: 16 points per pass 10.8x faster than one);
    on the CPU the convolutions already run near the cores' peak for one point, and large grouped convolutions
    are slower than small ones (2 threads: 4 points 1.2x faster than one, 16 points 0.9x). See
    ``benchmarks/bench_identification.py``.
    """
    return 16 if torch.device(device).type == "cuda" else 4


@dataclass(frozen=True)
class ScoringTargets:
    """What one item's fields are scored against, on the scoring device, prepared once for all its fields:
    ``fixed_labels``, ``moving_labels`` ``[1, 1, *S]`` int64, the keypoints grouped by fixed label (None without
    keypoints), the true displacement ``truth`` ``[ndim, *S]`` (voxels; None without one) and ``spacing`` (mm).
    Build with :func:`scoring_targets`."""

    fixed_labels: torch.Tensor
    moving_labels: torch.Tensor
    keypoints: ClassKeypoints | None
    truth: torch.Tensor | None
    spacing: tuple[float, ...]


def scoring_targets(item: dict[str, Any], device: torch.device) -> ScoringTargets:
    """A dataset item's labels (``fixed_labels``, ``moving_labels`` ``[1, *S]``), keypoints and true displacement
    (``gt_displacement``), if it has them."""
    fixed_labels = item["fixed_labels"].to(device)
    spacing = tuple(float(s) for s in item["spacing"])
    keypoints = None
    if "fixed_keypoints" in item:
        keypoints = class_keypoints(item["fixed_keypoints"], item["moving_keypoints"], fixed_labels[0], spacing,
                                    device)
    truth = item["gt_displacement"].to(device) if "gt_displacement" in item else None
    return ScoringTargets(fixed_labels[None], item["moving_labels"].to(device)[None], keypoints, truth, spacing)


def score_displacements(displacement: torch.Tensor, targets: ScoringTargets, num_classes: int
                        ) -> dict[str, torch.Tensor]:
    """``dice``, ``tre_mm`` and ``epe_mm`` (float64 ``[G, C]``) of fields ``[G, ndim, *S]`` against one item's
    labels, keypoints and true displacement (``tre_mm`` is NaN without keypoints, ``epe_mm`` without a true
    displacement). The fields come from the model: their values are not checked (the labels are warped by nearest
    sampling, as ``metrics.warp_labels`` does after its checks)."""
    warped = warp(targets.moving_labels, displacement, mode="nearest")
    per_class = dice(targets.fixed_labels, warped, num_classes).per_class
    if targets.truth is None:
        epe = torch.full_like(per_class, math.nan)
    else:  # dataset labels lie in 0..C-1 (checked when they are loaded)
        epe = class_end_point_error(displacement, targets.truth, targets.spacing, targets.fixed_labels[0, 0],
                                    num_classes, validate=False)
    return {"dice": per_class, "tre_mm": keypoint_class_tre(displacement, targets.keypoints, num_classes),
            "epe_mm": epe}


@torch.inference_mode()
def evaluate_pair(model: torch.nn.Module, item: dict[str, Any], grid: torch.Tensor, num_classes: int,
                  grid_batch: int | None = None, selection: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Scores of one pair at every grid point: column name -> float64 ``[G, C]`` (CPU).

    ``grid`` ``[G, P]`` (``(lam, mu)`` for the global model; any parameter vectors of ``model``); ``grid_batch``
    points share one forward pass of ``model`` (a parameter vector per sample, the images expanded; None:
    :func:`default_grid_batch` of the model's device). Without
    ``selection`` the keys are ``dice``, ``tre_mm`` and ``epe_mm`` of the item's labels (:func:`score_displacements`);
    with ``selection`` (an item carrying other labels, e.g. automatic segmentations) those are the classes of its
    labels, and ``dice_eval``, ``tre_mm_eval``, ``epe_mm_eval`` the item's own. The images and the grid are checked once (the first pass goes
    through ``model.forward``), the other passes run ``model.forward_unchecked`` without the data checks.
    """
    device = next(model.parameters()).device
    grid_batch = grid_batch or default_grid_batch(device)
    moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)
    # A spatial model that places its classes' values by the fixed labels gets them (others ignore them).
    labels = item["fixed_labels"][None].to(device) if "fixed_labels" in item else None
    sources = {"": item} if selection is None else {"": selection, "_eval": item}
    targets = {suffix: scoring_targets(source, device) for suffix, source in sources.items()}
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, grid.shape[0], grid_batch):
        hyper = grid[start:start + grid_batch].to(device, torch.float32)
        count = hyper.shape[0]
        # Later passes: the images the first pass checked, and grid points the stage built itself.
        run = model if start == 0 else model.forward_unchecked
        displacement = run(moving.expand(count, *moving.shape[1:]), fixed.expand(count, *fixed.shape[1:]),
                           hyper, labels).displacement
        for suffix, target in targets.items():
            for name, values in score_displacements(displacement, target, num_classes).items():
                chunks.setdefault(name + suffix, []).append(values.cpu())
    return {name: torch.cat(values) for name, values in chunks.items()}
