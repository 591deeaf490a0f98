"""Whether identified elastic parameters recover the order of the true tissue stiffness.

The stiffness of an identified Lame pair is read two ways: ``lam + mu`` (the sum the grid bounds) and Young's
modulus ``E = mu (3 lam + 2 mu) / (lam + mu)`` (0 when ``lam + mu = 0``). :func:`rank_agreement` is Spearman's rank
correlation over the foreground classes between one of them and the true Young's moduli (for the phantom,
``data.phantom.TISSUES``): the Pearson correlation of the ranks, tied values sharing their average rank. It is NaN
when undefined: fewer than 2 classes, or all values of either side tied.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["STIFFNESS_MEASURES", "young_modulus", "average_ranks", "spearman", "rank_agreement"]

#: The stiffness read from a Lame pair, by name.
STIFFNESS_MEASURES = ("lam_plus_mu", "young")


def young_modulus(lam: float, mu: float) -> float:
    """Young's modulus of a Lame pair, ``mu (3 lam + 2 mu) / (lam + mu)``; 0 when ``lam + mu = 0``."""
    total = lam + mu
    return 0.0 if total == 0 else mu * (3.0 * lam + 2.0 * mu) / total


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        ranks[order[start:stop + 1]] = 0.5 * (start + stop) + 1.0
        start = stop + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (average ranks for ties); NaN with fewer than 2 values or
    when either side is all tied."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs sequences of equal length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return math.nan
    ra, rb = average_ranks(a) - (len(a) + 1) / 2.0, average_ranks(b) - (len(b) + 1) / 2.0
    norm = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return math.nan if norm == 0 else float((ra * rb).sum() / norm)


def rank_agreement(identified: Mapping[str, tuple[float, float]], true_young: Mapping[str, float],
                   background: str = "background") -> dict[str, float]:
    """Spearman's correlation between identified stiffness and the true Young's moduli over the classes in both
    mappings except ``background``: ``{"lam_plus_mu": rho, "young": rho, "classes": n}``.

    ``identified`` maps a class name to its ``(lam, mu)``, ``true_young`` a class name to its true E."""
    names = [name for name in identified if name in true_young and name != background]
    truth = [float(true_young[name]) for name in names]
    sums = [float(identified[name][0]) + float(identified[name][1]) for name in names]
    young = [young_modulus(*map(float, identified[name])) for name in names]
    return {"lam_plus_mu": spearman(sums, truth), "young": spearman(young, truth), "classes": len(names)}
