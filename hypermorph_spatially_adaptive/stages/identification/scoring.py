"""Scoring of grid points for parameter identification: per-class Dice and TRE of many displacements at once.

:func:`evaluate_pair` runs the global model once per chunk of grid points (images expanded to ``[g, 1, *S]``,
parameters ``[g, 2]``) and scores every displacement with :func:`score_displacements`: Dice per class ``[G, C]`` of
the nearest-warped moving labels, and TRE per class ``[G, C]`` in mm (:func:`class_tre`; keypoints grouped by the
fixed label at their rounded position). The pair's labels and keypoints are prepared once
(:func:`scoring_targets`) for all chunks. Fields ``[G, ndim, *S]`` in voxels on the fixed grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...core.metrics import dice
from ...core.transform import sample_at_points, warp

__all__ = ["class_tre", "ScoringTargets", "scoring_targets", "score_displacements", "evaluate_pair",
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
class _Keypoints:
    """Keypoint pairs on the scoring device: ``fixed``, ``moving`` float64 ``[N, ndim]`` (voxels, N > 0), ``scale``
    the voxel spacing ``[ndim]`` (mm) and ``classes`` ``[N]`` the fixed label at each fixed point."""

    fixed: torch.Tensor
    moving: torch.Tensor
    scale: torch.Tensor
    classes: torch.Tensor


def _prepare_keypoints(fixed_keypoints: torch.Tensor, moving_keypoints: torch.Tensor, fixed_labels: torch.Tensor,
                       spacing: Sequence[float] | torch.Tensor, device: torch.device) -> _Keypoints | None:
    """Keypoints grouped by the fixed label ``[*S]`` at the fixed point rounded to the nearest voxel (clamped to the
    image); None without keypoints."""
    p = fixed_keypoints.to(device, torch.float64)
    if p.shape[0] == 0:
        return None
    voxel = p.round().long()
    for axis, size in enumerate(fixed_labels.shape):
        voxel[:, axis].clamp_(0, size - 1)
    return _Keypoints(p, moving_keypoints.to(device, torch.float64),
                      torch.as_tensor(spacing, dtype=torch.float64).to(device),
                      fixed_labels.to(device)[tuple(voxel.T)])


def _tre_by_class(displacement: torch.Tensor, keypoints: _Keypoints | None, num_classes: int) -> torch.Tensor:
    """Mean TRE per class in mm of fields ``[G, ndim, *S]``: float64 ``[G, C]``, NaN for a class without points."""
    batch, ndim, shape = displacement.shape[0], displacement.shape[1], displacement.shape[2:]
    device = displacement.device
    if keypoints is None:
        return torch.full((batch, num_classes), math.nan, dtype=torch.float64, device=device)
    p, q = keypoints.fixed, keypoints.moving
    # All G fields are sampled in one call as G * ndim channels: channel g * ndim + k is field g, axis k.
    u = sample_at_points(displacement.to(torch.float64).reshape(batch * ndim, *shape), p).view(-1, batch, ndim)
    distance = ((p[:, None] + u - q[:, None]) * keypoints.scale).norm(dim=-1).T  # [G, N]
    sums = torch.zeros(batch, num_classes, dtype=torch.float64, device=device).index_add_(1, keypoints.classes,
                                                                                           distance)
    counts = torch.bincount(keypoints.classes, minlength=num_classes).to(torch.float64)
    return torch.where(counts > 0, sums / counts.clamp(min=1.0), torch.full_like(sums, math.nan))


def class_tre(displacement: torch.Tensor, fixed_keypoints: torch.Tensor, moving_keypoints: torch.Tensor,
              fixed_labels: torch.Tensor, spacing: Sequence[float], num_classes: int) -> torch.Tensor:
    """Mean TRE per class in mm for many fields at once: ``[G, ndim, *S]`` -> float64 ``[G, C]``.

    Keypoints ``[N, ndim]`` (voxels) are grouped by the fixed label ``[*S]`` at the fixed keypoint rounded to the
    nearest voxel; a class without keypoints is NaN. Per point the error is ``|(p + u(p) - q) * spacing|`` as in
    ``metrics.tre`` (u linearly interpolated, border value outside).
    """
    keypoints = _prepare_keypoints(fixed_keypoints, moving_keypoints, fixed_labels, spacing, displacement.device)
    return _tre_by_class(displacement, keypoints, num_classes)


@dataclass(frozen=True)
class ScoringTargets:
    """What one item's fields are scored against, on the scoring device, prepared once for all its fields:
    ``fixed_labels``, ``moving_labels`` ``[1, 1, *S]`` int64 and the keypoints grouped by fixed label (None
    without keypoints). Build with :func:`scoring_targets`."""

    fixed_labels: torch.Tensor
    moving_labels: torch.Tensor
    keypoints: _Keypoints | None


def scoring_targets(item: dict[str, Any], device: torch.device) -> ScoringTargets:
    """A dataset item's labels (``fixed_labels``, ``moving_labels`` ``[1, *S]``) and keypoints, if it has them."""
    fixed_labels = item["fixed_labels"].to(device)
    keypoints = None
    if "fixed_keypoints" in item:
        keypoints = _prepare_keypoints(item["fixed_keypoints"], item["moving_keypoints"], fixed_labels[0],
                                       item["spacing"], device)
    return ScoringTargets(fixed_labels[None], item["moving_labels"].to(device)[None], keypoints)


def score_displacements(displacement: torch.Tensor, targets: ScoringTargets, num_classes: int
                        ) -> dict[str, torch.Tensor]:
    """``dice`` and ``tre_mm`` (float64 ``[G, C]``) of fields ``[G, ndim, *S]`` against one item's labels and
    keypoints (``tre_mm`` is NaN without keypoints). The fields come from the model: their values are not checked
    (the labels are warped by nearest sampling, as ``metrics.warp_labels`` does after its checks)."""
    warped = warp(targets.moving_labels, displacement, mode="nearest")
    per_class = dice(targets.fixed_labels, warped, num_classes).per_class
    return {"dice": per_class, "tre_mm": _tre_by_class(displacement, targets.keypoints, num_classes)}


@torch.inference_mode()
def evaluate_pair(model: torch.nn.Module, item: dict[str, Any], grid: torch.Tensor, num_classes: int,
                  grid_batch: int | None = None, selection: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Scores of one pair at every grid point: column name -> float64 ``[G, C]`` (CPU).

    ``grid`` ``[G, P]`` (``(lam, mu)`` for the global model; any parameter vectors of ``model``); ``grid_batch``
    points share one forward pass of ``model`` (a parameter vector per sample, the images expanded; None:
    :func:`default_grid_batch` of the model's device). Without
    ``selection`` the keys are ``dice`` and ``tre_mm`` of the item's labels; with ``selection`` (an item carrying
    other labels, e.g. automatic segmentations) ``dice`` and ``tre_mm`` are those labels' scores and
    ``dice_eval``, ``tre_mm_eval`` the item's own. The images and the grid are checked once (the first pass goes
    through ``model.forward``), the other passes run ``model.register`` without the data checks.
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
        run = model if start == 0 else model.register
        displacement = run(moving.expand(count, *moving.shape[1:]), fixed.expand(count, *fixed.shape[1:]),
                           hyper, labels).displacement
        for suffix, target in targets.items():
            for name, values in score_displacements(displacement, target, num_classes).items():
                chunks.setdefault(name + suffix, []).append(values.cpu())
    return {name: torch.cat(values) for name, values in chunks.items()}
