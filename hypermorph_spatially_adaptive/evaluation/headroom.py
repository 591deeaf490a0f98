"""Regularization headroom: how much choosing a class's own parameters could gain over one global pair.

Definition (per foreground class ``c``, over the global model's (lam, mu) grid and P pairs, with a score where lower
is better, e.g. the end-point error in mm against the true displacement):

- the global point ``g*`` minimises the mean over pairs of the mean over the foreground classes of the per-class
  score (the identification's ``global`` scope under ``--criterion epe``);
- the class's own point ``g_c`` minimises the class's mean score over pairs (its ``population`` scope);
- ``headroom_c = mean_p score[p, g*, c] - mean_p score[p, g_c, c]`` (>= 0 by construction), with the per-pair
  differences ``score[p, g*, c] - score[p, g_c, c]`` kept for intervals.

It is the gain available *through the global model's grid*: one pair acts on the whole image while the class is
scored, so it bounds what the paper's population identification can realise, not what a spatial model can. (0, 0)
is never chosen (as in the identification); ties go to the first point in grid order; NaN scores are ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ClassHeadroom", "headroom", "headroom_from_rows"]


@dataclass(frozen=True)
class ClassHeadroom:
    """One class's headroom: the global and own grid points, the class's mean score at each, their difference
    ``gain`` (global - own) and the per-pair differences ``pair_gains`` (pairs where the class is scored)."""

    class_id: int
    class_name: str
    global_lam: float
    global_mu: float
    global_score: float
    own_lam: float
    own_mu: float
    own_score: float
    gain: float
    pair_gains: tuple[float, ...]


def _best(values: np.ndarray, allowed: np.ndarray) -> int:
    key = np.where(allowed & np.isfinite(values), values, np.inf)
    return int(np.argmin(key)) if np.isfinite(key).any() else int(np.flatnonzero(allowed)[0])


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(values)
    counts = finite.sum(axis)
    total = np.where(finite, values, 0.0).sum(axis)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def headroom(scores: np.ndarray, grid: np.ndarray, class_names: Sequence[str],
             foreground: Sequence[int] | None = None) -> list[ClassHeadroom]:
    """Headroom of every foreground class (module docstring) from ``scores`` ``[P, G, C]`` (lower is better) at the
    grid points ``grid`` ``[G, 2]`` (lam, mu). ``foreground``: the class ids scored and reported (default all but
    class 0, the background)."""
    scores, grid = np.asarray(scores, dtype=np.float64), np.asarray(grid, dtype=np.float64)
    if scores.ndim != 3 or grid.shape != (scores.shape[1], 2) or scores.shape[2] != len(class_names):
        raise ValueError(f"scores must be [P, G, C] with grid [G, 2] and C class names, got {scores.shape}, "
                         f"{grid.shape} and {len(class_names)} names")
    foreground = list(range(1, scores.shape[2]) if foreground is None else foreground)
    allowed = ~((grid[:, 0] == 0) & (grid[:, 1] == 0))
    if not allowed.any():
        raise ValueError("the grid holds only (0, 0), which is never chosen")
    global_index = _best(_nanmean(_nanmean(scores[:, :, foreground], 2), 0), allowed)
    out = []
    for c in foreground:
        means = _nanmean(scores[:, :, c], 0)
        own = _best(means, allowed)
        diffs = scores[:, global_index, c] - scores[:, own, c]
        gain = float(means[global_index] - means[own])
        out.append(ClassHeadroom(c, class_names[c], *map(float, grid[global_index]), float(means[global_index]),
                                 *map(float, grid[own]), float(means[own]), gain,
                                 tuple(float(d) for d in diffs if math.isfinite(d))))
    return out


def headroom_from_rows(rows: Sequence[tuple[str, float, float, str, float]],
                       background: str = "background") -> list[ClassHeadroom]:
    """:func:`headroom` of a long table ``(pair_id, lam, mu, class_name, score)`` (e.g. ``grid_scores.csv``'s
    ``pair_id, lam, mu, class_name, epe_mm``); pairs, grid points and classes in order of first appearance, the
    class named ``background`` left out. A missing row is NaN."""
    pairs, points, classes = {}, {}, {}
    for pair, lam, mu, name, _ in rows:
        pairs.setdefault(pair, len(pairs))
        points.setdefault((float(lam), float(mu)), len(points))
        classes.setdefault(name, len(classes))
    scores = np.full((len(pairs), len(points), len(classes)), np.nan)
    for pair, lam, mu, name, score in rows:
        scores[pairs[pair], points[(float(lam), float(mu))], classes[name]] = np.nan if score is None else score
    names = list(classes)
    return headroom(scores, np.array(list(points)).reshape(-1, 2), names,
                    [i for i, name in enumerate(names) if name != background])
