"""The inference report: ``metrics.csv``, and mean and std per method and metric with a paired comparison
against ``global`` (``summary.csv``, ``summary.md``), overall and per tissue.

Rows are ``metrics.csv`` rows as dicts (``pair_id``, ``method``, metric columns as floats, NaN where absent). The
statistics (means, sample standard deviations, paired differences, Wilcoxon p-values) are those of
:mod:`...evaluation.statistics`. Per tissue, the summary has the EPE, TRE and strain of every foreground class
(:func:`tissue_summary_metrics`) and, where the pairs have a true displacement, a :data:`TRUE_FIELD` row with the
strain of the true field in each class (one value per pair).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ...evaluation.pair_metrics import tissue_columns
from ...evaluation.statistics import describe, metric_value, paired_comparison
from ...files import atomic_write_csv, atomic_write_text

__all__ = ["BASELINE", "TRUE_FIELD", "SUMMARY_COLUMNS", "HEADLINE", "TISSUE_TABLES", "metric_columns",
           "write_metrics", "tissue_summary_metrics", "summary_metrics", "summary_table", "format_markdown",
           "write_summary"]

BASELINE = "global"
#: The ``method`` of the summary rows that describe the true displacement (its strain per class).
TRUE_FIELD = "true_field"
SUMMARY_COLUMNS = ("method", "metric", "n", "mean", "std", "baseline", "n_pairs", "mean_difference", "improved",
                   "p_value")
#: Metrics without a paired comparison: runtime, and strain (neither more nor less is better; compare it with the
#: true field's).
_NOT_COMPARED = ("runtime_s", "strain_")
#: Metrics of the paired comparison in summary.md (summary.csv has every Dice class too).
HEADLINE = ("dice_mean", "hd95_mm", "tre_mm", "sdlogj", "folding_percent", "epe_mm")
#: The per-tissue tables of summary.md: metric prefix -> heading.
TISSUE_TABLES = {"epe": "End-point error (mm) against the true displacement",
                 "tre": "TRE (mm) of the keypoints in the class",
                 "strain": "Strain |sym grad u| (dimensionless)"}


def metric_columns(class_names: Sequence[str]) -> list[str]:
    """``metrics.csv`` columns: the documented ones, the extensions ``epe_mm`` and ``parameters_source``, then the
    per-class ``epe_<class>``, ``tre_<class>``, ``strain_<class>`` and ``gt_strain_<class>`` of every class
    (:func:`~...evaluation.pair_metrics.tissue_columns`)."""
    return ["pair_id", "method", "dice_mean", *[f"dice_{name}" for name in class_names], "hd95_mm", "tre_mm",
            "sdlogj", "folding_percent", "runtime_s", "epe_mm", "parameters_source", *tissue_columns(class_names)]


def _cell(value: Any) -> Any:
    """CSV cell: NaN (no value) is written empty."""
    return "" if isinstance(value, float) and math.isnan(value) else value


def write_metrics(path: str | Path, rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Path:
    """Write ``metrics.csv`` (:func:`metric_columns`, one row per pair and method) atomically."""
    columns = metric_columns(class_names)
    return atomic_write_csv(path, columns, ([_cell(row.get(c, "")) for c in columns] for row in rows))


def tissue_summary_metrics(class_names: Sequence[str]) -> list[str]:
    """Per-tissue metrics of the summary: ``epe_``, ``tre_`` and ``strain_<class>`` of the foreground classes."""
    return [f"{kind}_{name}" for kind in TISSUE_TABLES for name in class_names[1:]]


def summary_metrics(class_names: Sequence[str]) -> list[str]:
    """Metrics summarised per method, in ``metrics.csv`` order."""
    return ["dice_mean", *[f"dice_{name}" for name in class_names], "hd95_mm", "tre_mm", "sdlogj",
            "folding_percent", "runtime_s", "epe_mm", *tissue_summary_metrics(class_names)]


def _record(method: str, metric: str, values: Sequence[float]) -> dict[str, Any]:
    n, mean, std = describe(values)
    return {"method": method, "metric": metric, "n": n, "mean": mean, "std": std, "baseline": "", "n_pairs": "",
            "mean_difference": "", "improved": "", "p_value": ""}


def summary_table(rows: Sequence[dict[str, Any]], class_names: Sequence[str], methods: Sequence[str],
                  baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One record per method and metric with :data:`SUMMARY_COLUMNS` (comparison fields empty for the baseline,
    for runtime and strain and when the baseline was not run), then, when the pairs have a true displacement, the
    :data:`TRUE_FIELD` records ``strain_<class>`` (the ``gt_strain_<class>`` of each pair once)."""
    table = []
    compare = baseline in methods
    for method in methods:
        for metric in summary_metrics(class_names):
            record = _record(method, metric, [metric_value(r, metric) for r in rows if r["method"] == method])
            if compare and method != baseline and not metric.startswith(_NOT_COMPARED):
                result = paired_comparison(rows, method, metric, baseline)
                record.update(baseline=baseline, n_pairs=result.n_pairs, mean_difference=result.mean_difference,
                              improved=result.improved, p_value=result.p_value)
            table.append(record)
    pairs = {}
    for row in rows:  # the true field is the same for every method of a pair
        pairs.setdefault(row["pair_id"], row)
    truth = [_record(TRUE_FIELD, f"strain_{name}", [metric_value(r, f"gt_strain_{name}") for r in pairs.values()])
             for name in class_names[1:]]
    return table + (truth if any(r["n"] for r in truth) else [])


def _number(value: Any) -> str:
    return "-" if value == "" or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _mean_std(record: dict[str, Any] | None) -> str:
    return "-" if record is None or not record["n"] else f"{_number(record['mean'])} ± {_number(record['std'])}"


def _tissue_tables(cell: dict[tuple[str, str], dict[str, Any]], methods: Sequence[str],
                   class_names: Sequence[str]) -> list[str]:
    """The per-tissue tables of :data:`TISSUE_TABLES` that have values: a row per method with any (and the true
    field's, which has strain only), a column per foreground class."""
    lines = []
    for kind, heading in TISSUE_TABLES.items():
        names = [f"{kind}_{name}" for name in class_names[1:]]
        shown = [m for m in (*methods, TRUE_FIELD) if any(cell.get((m, name), {}).get("n") for name in names)]
        if not shown:
            continue
        lines += ["", f"{heading}:", "", "| method | " + " | ".join(class_names[1:]) + " |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {m.replace('_', ' ') if m == TRUE_FIELD else m} | "
                  + " | ".join(_mean_std(cell.get((m, name))) for name in names) + " |" for m in shown]
    if not lines:
        return []
    return ["", "## Per tissue", "", "Mean ± std over pairs inside each foreground class of the fixed labels."] + lines


def format_markdown(table: Sequence[dict[str, Any]], methods: Sequence[str], notes: Sequence[str] = (),
                    class_names: Sequence[str] = ()) -> str:
    """Markdown: mean ± std per method (metrics with any value, the per-tissue ones of ``class_names`` apart), the
    per-tissue tables, the paired comparison on the :data:`HEADLINE` metrics, then notes."""
    tissue = set(tissue_summary_metrics(class_names))
    metrics = list(dict.fromkeys(r["metric"] for r in table if r["n"] > 0 and r["metric"] not in tissue))
    cell = {(r["method"], r["metric"]): r for r in table}
    lines = ["# Inference summary", "", "Mean ± std over pairs (n pairs with a value).", "",
             "| method | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for method in methods:
        n = max((cell[(method, m)]["n"] for m in metrics), default=0)
        lines.append(f"| {method} | {n} | " + " | ".join(_mean_std(cell[(method, m)]) for m in metrics) + " |")
    lines += _tissue_tables(cell, methods, class_names)
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
    text = format_markdown(table, methods, notes, class_names)
    atomic_write_text(Path(out) / "summary.md", text)
    return text
