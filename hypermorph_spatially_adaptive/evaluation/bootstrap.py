"""Confidence intervals for results pooled over several training seeds, each with its own test pairs.

Pairs of one seed share a trained model, so they are not independent draws: the interval resamples at both
levels (a two-stage bootstrap): draw seeds with replacement, then within each drawn seed its pairs with
replacement, and take the mean of everything drawn. With few seeds the interval is wide, as it should be: it
includes the spread between training runs, not only between pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["Estimate", "hierarchical_bootstrap", "paired_estimate"]


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval over ``n`` values from ``groups`` seeds (NaN where undefined); for paired
    differences also how many pairs improved (``improved``, lower is better unless said otherwise) and the
    two-sided Wilcoxon signed-rank p-value over all pairs."""

    mean: float
    low: float
    high: float
    n: int
    groups: int
    improved: int | None = None
    p_value: float | None = None

    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of 0."""
        return self.low > 0 or self.high < 0


def _finite_groups(groups: Sequence[Sequence[float]]) -> list[np.ndarray]:
    kept = [np.asarray([v for v in group if v is not None and math.isfinite(v)], dtype=np.float64)
            for group in groups]
    return [group for group in kept if group.size]


def hierarchical_bootstrap(groups: Sequence[Sequence[float]], resamples: int = 4000, seed: int = 0,
                           level: float = 0.95) -> Estimate:
    """Mean of all finite values of ``groups`` (one sequence per seed) with a two-stage bootstrap interval.

    Non-finite values are dropped; an empty input gives NaN. One group is resampled over its values only.
    """
    kept = _finite_groups(groups)
    if not kept:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    values = np.concatenate(kept)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(0, len(kept), size=len(kept))
        draws = [kept[g][rng.integers(0, kept[g].size, size=kept[g].size)] for g in chosen]
        means[r] = np.concatenate(draws).mean()
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Estimate(float(values.mean()), float(low), float(high), int(values.size), len(kept))


def paired_estimate(method: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]],
                    higher_is_better: bool = False, **options) -> Estimate:
    """``method - baseline`` over matched pairs (the same positions in each seed's sequences), with the interval of
    :func:`hierarchical_bootstrap`, the count of pairs that improved and the Wilcoxon p-value over all pairs."""
    differences = [[m - b for m, b in zip(ms, bs)] for ms, bs in zip(method, baseline)]
    estimate = hierarchical_bootstrap(differences, **options)
    flat = np.concatenate(_finite_groups(differences)) if estimate.n else np.zeros(0)
    improved = int(np.sum(flat > 0) if higher_is_better else np.sum(flat < 0))
    p_value = float(stats.wilcoxon(flat).pvalue) if flat.size >= 2 and np.any(flat != 0) else math.nan
    return Estimate(estimate.mean, estimate.low, estimate.high, estimate.n, estimate.groups, improved, p_value)
