"""Paired statistics of per-pair metrics, for reports that compare registration methods on the same pairs.

Rows are metric records as dicts (``pair_id``, ``method``, metric columns as floats or CSV strings; NaN or empty
where absent). Means and standard deviations (sample std, ``ddof=1``; NaN for a single value) ignore NaN; an
infinite HD95 (a structure lost) is kept and makes the mean infinite. A paired comparison of a method against a
baseline uses the pairs where both have a finite value: the mean of ``method - baseline``, how many pairs improved
(Dice higher; distances, SDlogJ and folding lower; ties do not count) and the two-sided Wilcoxon signed-rank
p-value (NaN with fewer than 2 pairs or when every difference is 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

__all__ = ["Comparison", "higher_is_better", "metric_value", "describe", "paired_comparison"]


@dataclass(frozen=True)
class Comparison:
    """A method against the baseline on one metric, over ``n_pairs`` pairs with finite values in both."""

    n_pairs: int
    mean_difference: float
    improved: int
    p_value: float


def higher_is_better(metric: str) -> bool:
    """Dice columns improve upwards; distances, SDlogJ, folding and runtime downwards."""
    return metric.startswith("dice_")


def metric_value(row: dict[str, Any], metric: str) -> float:
    """``row[metric]`` as a float; NaN when absent or empty."""
    value = row.get(metric, "")
    return float("nan") if value in ("", None) else float(value)


def describe(values: Sequence[float]) -> tuple[int, float, float]:
    """``(n, mean, std)`` of the non-NaN values (sample std; NaN where undefined)."""
    kept = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if kept.size == 0:
        return 0, float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # inf - inf in the std of a lost structure is NaN, as it should be
        std = float(np.std(kept, ddof=1)) if kept.size > 1 else float("nan")
    return int(kept.size), float(np.mean(kept)), std


def paired_comparison(rows: Sequence[dict[str, Any]], method: str, metric: str,
                      baseline: str) -> Comparison:
    """``method`` against ``baseline`` on ``metric`` over the pairs both have (matched by ``pair_id``)."""
    base = {row["pair_id"]: metric_value(row, metric) for row in rows if row["method"] == baseline}
    differences = []
    for row in rows:
        if row["method"] == method and row["pair_id"] in base:
            value, reference = metric_value(row, metric), base[row["pair_id"]]
            if math.isfinite(value) and math.isfinite(reference):
                differences.append(value - reference)
    if not differences:
        return Comparison(0, float("nan"), 0, float("nan"))
    diff = np.asarray(differences)
    improved = int(np.sum(diff > 0) if higher_is_better(metric) else np.sum(diff < 0))
    p_value = float("nan")
    if diff.size >= 2 and np.any(diff != 0):
        p_value = float(stats.wilcoxon(diff).pvalue)
    return Comparison(int(diff.size), float(diff.mean()), improved, p_value)
