"""The inference report: ``metrics.csv``, and mean and std per method and metric with a paired comparison
against ``global`` (``summary.csv``, ``summary.md``).

Rows are ``metrics.csv`` rows as dicts (``pair_id``, ``method``, metric columns as floats, NaN where absent). The
statistics (means, sample standard deviations, paired differences, Wilcoxon p-values) are those of
:mod:`...evaluation.statistics`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ...evaluation.statistics import describe, metric_value, paired_comparison
from ...files import atomic_write_csv, atomic_write_text

__all__ = ["BASELINE", "SUMMARY_COLUMNS", "HEADLINE", "metric_columns", "write_metrics", "summary_metrics",
           "summary_table", "format_markdown", "write_summary"]

BASELINE = "global"
SUMMARY_COLUMNS = ("method", "metric", "n", "mean", "std", "baseline", "n_pairs", "mean_difference", "improved",
                   "p_value")
_NOT_COMPARED = ("runtime_s",)
#: Metrics of the paired comparison in summary.md (summary.csv has every Dice class too).
HEADLINE = ("dice_mean", "hd95_mm", "tre_mm", "sdlogj", "folding_percent", "epe_mm")


def metric_columns(class_names: Sequence[str]) -> list[str]:
    """``metrics.csv`` columns: the documented ones, then the extensions ``epe_mm`` and ``parameters_source``."""
    return ["pair_id", "method", "dice_mean", *[f"dice_{name}" for name in class_names], "hd95_mm", "tre_mm",
            "sdlogj", "folding_percent", "runtime_s", "epe_mm", "parameters_source"]


def _cell(value: Any) -> Any:
    """CSV cell: NaN (no value) is written empty."""
    return "" if isinstance(value, float) and math.isnan(value) else value


def write_metrics(path: str | Path, rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Path:
    """Write ``metrics.csv`` (:func:`metric_columns`, one row per pair and method) atomically."""
    columns = metric_columns(class_names)
    return atomic_write_csv(path, columns, ([_cell(row.get(c, "")) for c in columns] for row in rows))


def summary_metrics(class_names: Sequence[str]) -> list[str]:
    """Metrics summarised, in ``metrics.csv`` order."""
    return ["dice_mean", *[f"dice_{name}" for name in class_names], "hd95_mm", "tre_mm", "sdlogj",
            "folding_percent", "runtime_s", "epe_mm"]


def summary_table(rows: Sequence[dict[str, Any]], class_names: Sequence[str], methods: Sequence[str],
                  baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One record per method and metric with :data:`SUMMARY_COLUMNS` (comparison fields empty for the baseline,
    for runtime and when the baseline was not run)."""
    table = []
    compare = baseline in methods
    for method in methods:
        for metric in summary_metrics(class_names):
            n, mean, std = describe([metric_value(r, metric) for r in rows if r["method"] == method])
            record = {"method": method, "metric": metric, "n": n, "mean": mean, "std": std, "baseline": "",
                      "n_pairs": "", "mean_difference": "", "improved": "", "p_value": ""}
            if compare and method != baseline and metric not in _NOT_COMPARED:
                result = paired_comparison(rows, method, metric, baseline)
                record.update(baseline=baseline, n_pairs=result.n_pairs, mean_difference=result.mean_difference,
                              improved=result.improved, p_value=result.p_value)
            table.append(record)
    return table


def _number(value: Any) -> str:
    return "-" if value == "" or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def format_markdown(table: Sequence[dict[str, Any]], methods: Sequence[str], notes: Sequence[str] = ()) -> str:
    """Markdown: mean ± std per method (metrics with any value), the paired comparison on the :data:`HEADLINE`
    metrics, then notes."""
    metrics = list(dict.fromkeys(r["metric"] for r in table if r["n"] > 0))
    cell = {(r["method"], r["metric"]): r for r in table}
    lines = ["# Inference summary", "", "Mean ± std over pairs (n pairs with a value).", "",
             "| method | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for method in methods:
        n = max((cell[(method, m)]["n"] for m in metrics), default=0)
        values = [f"{_number(cell[(method, m)]['mean'])} ± {_number(cell[(method, m)]['std'])}" for m in metrics]
        lines.append(f"| {method} | {n} | " + " | ".join(values) + " |")
    compared = [r for r in table if r["baseline"] and r["metric"] in metrics and r["metric"] in HEADLINE]
    if compared:
        lines += ["", f"Paired comparison against {compared[0]['baseline']} (difference = method - baseline; "
                      "improved: Dice higher, the others lower).", "",
                  "| method | metric | pairs | mean difference | improved | Wilcoxon p |", "|---|---|---|---|---|---|"]
        for r in compared:
            lines.append(f"| {r['method']} | {r['metric']} | {r['n_pairs']} | {_number(r['mean_difference'])} | "
                         f"{r['improved']}/{r['n_pairs']} | {_number(r['p_value'])} |")
    if notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def write_summary(out: str | Path, rows: Sequence[dict[str, Any]], class_names: Sequence[str],
                  methods: Sequence[str], notes: Sequence[str] = ()) -> str:
    """Write ``out/summary.csv`` (:data:`SUMMARY_COLUMNS`) and ``out/summary.md``; returns the markdown."""
    table = summary_table(rows, class_names, methods)
    atomic_write_csv(Path(out) / "summary.csv", SUMMARY_COLUMNS,
                     ([_cell(r[c]) for c in SUMMARY_COLUMNS] for r in table))
    text = format_markdown(table, methods, notes)
    atomic_write_text(Path(out) / "summary.md", text)
    return text
