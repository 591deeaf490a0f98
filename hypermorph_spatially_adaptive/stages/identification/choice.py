"""Choosing parameters from grid scores alone: the ``global``, ``population`` and subject-specific scopes.

:func:`choose_parameters` turns :class:`~.grid_scores.GridScores` into ``parameters.csv`` rows without a model or
data, so a merge of shards chooses exactly as a single run does. Dice is maximised, TRE and EPE (mm) minimised.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..parameter_table import GLOBAL, POPULATION, ParameterRow
from .grid import allowed_points, grid_index
from .grid_scores import GridScores

__all__ = ["CRITERIA", "CRITERION_COLUMNS", "BACKGROUND_POLICIES", "BACKGROUND_NOTES", "objective",
           "class_criterion", "scope_class_scores", "best_index", "choose_parameters"]

CRITERIA = ("dice", "tre", "epe")
#: The per-class score each criterion reads (a ``grid_scores.csv`` column).
CRITERION_COLUMNS = {"dice": "dice", "tre": "tre_mm", "epe": "epe_mm"}
BACKGROUND_POLICIES = ("global", "population", "fixed")
#: How each --background policy sets the background class (id 0).
BACKGROUND_NOTES = {"global": "gets the global scope's point: background Dice is large whatever the parameters, so "
                              "choosing by it picks noise",
                    "population": "is chosen by its own score like any class",
                    "fixed": "gets --background-params"}


def objective(scores: Mapping[str, torch.Tensor], criterion: str) -> torch.Tensor:
    """The one number a shared parameter choice optimises, from per-class scores ``[P, K, C]`` -> ``[K]``.

    ``scores`` maps the columns ``dice``, ``tre_mm``, ``epe_mm`` (only the criterion's is read) to scores of P pairs
    at K parameter points. ``dice``: mean over pairs of the foreground mean Dice (higher is better; background
    excluded, it is large whatever the parameters). ``tre``: mean over pairs of the mean of the per-class TRE over
    classes with keypoints (lower is better, mm). ``epe``: mean over pairs of the mean over the foreground classes
    of the per-class EPE, the mean end-point error in mm inside the class against the true displacement (lower is
    better; background excluded as for Dice). NaNs are ignored.
    """
    values = scores[CRITERION_COLUMNS[criterion]]
    per_pair = values.nanmean(-1) if criterion == "tre" else values[..., 1:].nanmean(-1)
    return per_pair.nanmean(0)


def class_criterion(scores: GridScores, pairs: Sequence[int], class_id: int, criterion: str) -> str:
    """``tre`` or ``epe`` when asked for and the class has that score in ``pairs`` (keypoints, a true displacement
    and voxels of the class); otherwise ``dice`` (the fallback)."""
    values = scores.metrics[CRITERION_COLUMNS[criterion]][list(pairs), :, class_id]
    return criterion if criterion == "dice" or bool(torch.isfinite(values).any()) else "dice"


def scope_class_scores(scores: GridScores, pairs: Sequence[int], class_id: int, kind: str) -> torch.Tensor:
    """Mean over ``pairs`` of one class's ``kind`` (dice, tre or epe) score at every grid point: float64 ``[G]``."""
    return scores.metrics[CRITERION_COLUMNS[kind]][list(pairs), :, class_id].nanmean(0)


def best_index(values: torch.Tensor, allowed: torch.Tensor, higher_is_better: bool) -> int:
    """Index of the best finite value among ``allowed`` ``[G]``; ties go to the first in grid order.

    When no allowed value is finite, the first allowed index (its score is NaN).
    """
    key = values if higher_is_better else -values
    key = torch.where(allowed & torch.isfinite(key), key, torch.full_like(key, -math.inf))
    if bool((key == -math.inf).all()):
        return int(torch.nonzero(allowed)[0])
    return int(torch.argmax(key))  # argmax returns the first of equal maxima


def _scope_rows(scope: str, scores: GridScores, pairs: Sequence[int], criterion: str, background: str,
                global_index: int, background_params: tuple[float, float]) -> list[ParameterRow]:
    """Per-class choices over ``pairs``; the background class follows the ``background`` policy."""
    allowed = allowed_points(scores.grid)
    rows = []
    for class_id, class_name in enumerate(scores.class_names):
        kind = class_criterion(scores, pairs, class_id, criterion)
        values = scope_class_scores(scores, pairs, class_id, kind)
        if class_id == 0 and background == "fixed":
            lam, mu = background_params
            index = grid_index(scores.grid, lam, mu)
            score = math.nan if index is None else float(values[index])
            rows.append(ParameterRow(scope, class_id, class_name, float(lam), float(mu), kind, score))
            continue
        if class_id == 0 and background == "global":
            index = global_index
        else:
            index = best_index(values, allowed, higher_is_better=kind == "dice")
        lam, mu = scores.grid[index].tolist()
        rows.append(ParameterRow(scope, class_id, class_name, lam, mu, kind, float(values[index])))
    return rows


def choose_parameters(scores: GridScores, criterion: str = "dice", background: str = "global",
                      background_params: tuple[float, float] = (0.1, 0.1)) -> list[ParameterRow]:
    """``parameters.csv`` rows from grid scores alone (no model, no data).

    Scopes, in this order: ``global`` (the grid point best by :func:`objective` over all pairs, repeated for every
    class), ``population`` (per class, the best mean over all pairs) and one scope per pair id (per class, best
    for that pair). Dice is maximised, TRE and EPE minimised; a class without that score in the scope (no
    keypoints, no true displacement) falls back to Dice (its row's ``criterion`` says ``dice``). (0, 0) is never
    chosen; ties go to the first point in grid order.
    ``score`` is the class's criterion value at the chosen point (mean over the scope's pairs).

    The background class (id 0) gets the global point (``background="global"``; its Dice is large whatever the
    parameters, so choosing by it picks noise), its own best point (``"population"``) or ``background_params``
    (``"fixed"``; score NaN when that point is not on the grid).
    """
    if criterion not in CRITERIA or background not in BACKGROUND_POLICIES:
        raise ValueError(f"criterion must be one of {CRITERIA} and background one of {BACKGROUND_POLICIES}, "
                         f"got {criterion!r} and {background!r}")
    allowed = allowed_points(scores.grid)
    if not bool(allowed.any()):
        raise ValueError("the grid holds only (0, 0), which is never chosen; use a finer --grid-step or more values")
    everyone = list(range(len(scores.pair_ids)))
    global_index = best_index(objective(scores.metrics, criterion), allowed, criterion == "dice")
    lam, mu = scores.grid[global_index].tolist()
    rows = []
    for class_id, class_name in enumerate(scores.class_names):
        kind = class_criterion(scores, everyone, class_id, criterion)
        score = float(scope_class_scores(scores, everyone, class_id, kind)[global_index])
        rows.append(ParameterRow(GLOBAL, class_id, class_name, lam, mu, kind, score))
    rows += _scope_rows(POPULATION, scores, everyone, criterion, background, global_index, background_params)
    for p, pair_id in enumerate(scores.pair_ids):
        rows += _scope_rows(pair_id, scores, [p], criterion, background, global_index, background_params)
    return rows
