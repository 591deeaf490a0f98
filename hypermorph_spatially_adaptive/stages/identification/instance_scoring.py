"""Scoring grid points through the instance optimisation (``--score-with instance``) instead of the network.

At every grid point ``(lam, mu)`` (the same pair for every class, as the global model's grid) the pair is registered
by :func:`~...core.instance_optimisation.optimise_velocity` from a zero velocity, the training objective optimised
on the pair itself, and the field is scored exactly as the network's (:func:`.scoring.score_displacements`: Dice,
TRE and EPE per class). The scopes are then chosen from these scores as from the network's (global, per class over
the pairs, per class per pair), so the values suit the optimised ``+io`` methods of inference
(``--instance-parameters``), whose optimisation is run with the same settings. Starting from zero rather than from a
network's prediction: coarse to fine, both reach the same optimum of the objective (on the demo's validation pairs
their errors differ by about 0.01 mm), and zero needs no model.

The grid points of a chunk are optimised together as one batch (one ``(lam, mu)`` per sample); Adam's steps do not
depend on the 1/B of the batch mean, so each sample follows its own optimisation (to Adam's epsilon).
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from ...core.instance_optimisation import optimise_velocity
from ..inference.instance import InstanceOptions, add_instance_args
from .scoring import score_displacements, scoring_targets

__all__ = ["SCORERS", "add_scoring_args", "instance_options", "evaluate_pair_instance"]

#: ``--score-with`` choices: the global network at each grid point, or the instance optimisation.
SCORERS = ("network", "instance")


def add_scoring_args(parser: argparse.ArgumentParser) -> None:
    """``--score-with`` and the optimisation's ``--instance-*`` flags (:func:`~..inference.instance.add_instance_args`,
    as inference's, whose ``+io`` methods the chosen values are for)."""
    group = parser.add_argument_group("scoring through the instance optimisation (parameters for inference's +io "
                                      "methods, --instance-parameters)")
    group.add_argument("--score-with", choices=SCORERS, default="network",
                       help="register each pair at each grid point with the global network, or by the instance "
                            "optimisation from zero (slower: use a coarser --grid-step, e.g. 0.2)")
    add_instance_args(group, steps=200, steps_help="Adam steps per level")


def instance_options(args: argparse.Namespace) -> InstanceOptions | None:
    """The optimisation's settings with ``--score-with instance`` (checked, ValueError naming the flag), else None."""
    if args.score_with != "instance":
        return None
    if args.selection_labels is not None:
        raise ValueError("--selection-labels is not supported with --score-with instance")
    if args.instance_steps < 1:
        raise ValueError(f"--instance-steps must be >= 1 with --score-with instance, got {args.instance_steps}")
    return InstanceOptions.from_namespace(args)


def evaluate_pair_instance(item: dict[str, Any], grid: torch.Tensor, num_classes: int, options: InstanceOptions,
                           device: torch.device, int_steps: int = 7, grid_batch: int = 16) -> dict[str, torch.Tensor]:
    """Scores of one pair at every grid point ``[G, 2]`` through the optimisation: column name -> float64
    ``[G, C]`` (CPU), the columns of :func:`.scoring.score_displacements`; ``grid_batch`` points per batch."""
    fixed, moving = item["fixed"][None].to(device), item["moving"][None].to(device)
    spacing = tuple(float(s) for s in item["spacing"])
    targets = scoring_targets(item, device)
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, grid.shape[0], grid_batch):
        points = grid[start:start + grid_batch].to(device, torch.float32)
        count = points.shape[0]
        result = optimise_velocity(fixed.expand(count, *fixed.shape[1:]), moving.expand(count, *moving.shape[1:]),
                                   points[:, 0], points[:, 1], spacing=spacing, steps=options.steps, lr=options.lr,
                                   levels=options.levels, int_steps=int_steps, ncc_window=options.ncc_window)
        for name, values in score_displacements(result.displacement, targets, num_classes).items():
            chunks.setdefault(name, []).append(values.cpu())
    return {name: torch.cat(values) for name, values in chunks.items()}
