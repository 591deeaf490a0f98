"""The demo's verdict: do tissue-specific parameters beat the best global ones on the phantom, and does the
identified stiffness rank the tissues as the phantom's materials do?

Reads ``metrics.csv`` (inference) and ``parameters.csv`` (identification); stiffness of a class is its total
regularization weight ``lam + mu`` in the ``population`` scope (the similarity weight is ``1 - lam - mu``).
The optional control (inference method ``literature`` given the global pair for every class) runs the spatial
model without tissue-specific parameters: a tissue method that beats ``global`` but not the control owes its gain
to the second network, not to the parameters.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ...data.phantom import TISSUES
from ...evaluation.pair_metrics import nanmean
from ...files import atomic_write_text
from ..parameter_table import POPULATION, read_parameters

__all__ = ["DemoVerdict", "judge", "write_summary"]

METHODS = ("global", "tissue_population", "tissue_subject")
#: The instance-optimised methods and the classical baseline, shown when inference ran them.
IO_METHODS = ("global+io", "tissue_population+io", "tissue_subject+io", "identity+io", "elastix")
#: (method, baseline) pairs the summary answers when both were run.
IO_QUESTIONS = (("tissue_population+io", "global+io"), ("tissue_population+io", "elastix"))
#: Inference method name of the control: the spatial model at the global pair (demo.py passes it as literature).
CONTROL = "literature"
CONTROL_LABEL = "control: spatial model at the global pair"
METRICS = (("epe_mm", "EPE (mm)", -1), ("tre_mm", "TRE (mm)", -1), ("dice_mean", "Dice", 1),
           ("sdlogj", "SDlogJ", -1), ("folding_percent", "folding (%)", -1), ("runtime_s", "s per pair", -1))
#: The phantom's tissues from stiffest to softest by nominal Young's modulus (background excluded).
PHANTOM_STIFFNESS_ORDER = tuple(sorted((name for name in TISSUES if name != "background"),
                                       key=lambda name: -TISSUES[name]["E"]))


@dataclass(frozen=True)
class DemoVerdict:
    """Mean metric per method (``means[method][metric]``, the control included when run), whether each tissue
    method has a lower mean EPE and TRE than the global one (``tissue_beats_global[method][metric]``) and than the
    control (``tissue_beats_control``, empty without it), and the identified stiffness per class."""

    means: dict[str, dict[str, float]]
    pairs: int
    tissue_beats_global: dict[str, dict[str, bool]]
    stiffness: dict[str, float]
    stiffness_order: tuple[str, ...]
    tissue_beats_control: dict[str, dict[str, bool]]

    @property
    def bone_stiffest(self) -> bool:
        return bool(self.stiffness_order) and self.stiffness_order[0] == "bone" and \
            list(self.stiffness.values()).count(self.stiffness["bone"]) == 1


def _read_metrics(path: Path) -> dict[str, list[dict[str, str]]]:
    if not path.is_file():
        raise ValueError(f"{path}: metrics.csv not found (run inference first)")
    rows: dict[str, list[dict[str, str]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(row["method"], []).append(row)
    missing = [m for m in METHODS if m not in rows]
    if missing:
        raise ValueError(f"{path}: no rows for method(s) {missing}")
    return rows


def _value(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def judge(metrics_csv: str | Path, parameters_csv: str | Path) -> DemoVerdict:
    """Compare the methods of ``metrics_csv`` and rank the classes of ``parameters_csv`` by stiffness."""
    rows = _read_metrics(Path(metrics_csv))
    methods = METHODS + ((CONTROL,) if CONTROL in rows else ()) + tuple(m for m in IO_METHODS if m in rows)
    means = {method: {key: nanmean([_value(r.get(key, "")) for r in rows[method]]) for key, _, _ in METRICS}
             for method in methods}
    table = read_parameters(parameters_csv)
    lam, mu = table.values(POPULATION)
    stiffness = {name: float(l + m) for name, l, m in zip(table.class_names, lam, mu) if name != "background"}
    order = tuple(sorted(stiffness, key=lambda name: -stiffness[name]))

    def beats(baseline: str) -> dict[str, dict[str, bool]]:
        return {method: {key: means[method][key] < means[baseline][key] for key in ("epe_mm", "tre_mm")}
                for method in METHODS[1:]}

    return DemoVerdict(means, len(rows["global"]), beats("global"), stiffness, order,
                       beats(CONTROL) if CONTROL in means else {})


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def write_summary(metrics_csv: str | Path, parameters_csv: str | Path, out: str | Path,
                  locality_csv: str | Path | None = None) -> Path:
    """Write the demo's markdown summary (table, identified stiffness, verdict; the spatial model's locality per
    class when ``locality_csv`` is given) to ``out``."""
    verdict = judge(metrics_csv, parameters_csv)
    lines = [f"Test pairs: {verdict.pairs}", "", "| method | " + " | ".join(t for _, t, _ in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for method in verdict.means:
        values = " | ".join(f"{verdict.means[method][key]:.3f}" for key, _, _ in METRICS)
        lines.append(f"| {CONTROL_LABEL if method == CONTROL else method} | {values} |")
    lines += ["", "Identified stiffness lam + mu per class (population scope): "
              + ", ".join(f"{name} {value:.2f}" for name, value in verdict.stiffness.items()),
              f"Identified order: {' > '.join(verdict.stiffness_order)}; "
              f"phantom materials: {' > '.join(PHANTOM_STIFFNESS_ORDER)}", "",
              f"- bone identified as the stiffest tissue: {_yes(verdict.bone_stiffest)}"]
    for method, beats in verdict.tissue_beats_global.items():
        lines.append(f"- {method} beats global on EPE: {_yes(beats['epe_mm'])}, on TRE: {_yes(beats['tre_mm'])}")
    for method, beats in verdict.tissue_beats_control.items():
        lines.append(f"- {method} beats the control on EPE: {_yes(beats['epe_mm'])}, on TRE: "
                     f"{_yes(beats['tre_mm'])}")
    for method, baseline in IO_QUESTIONS:
        if method in verdict.means and baseline in verdict.means:
            answer = {key: _yes(verdict.means[method][key] < verdict.means[baseline][key])
                      for key in ("epe_mm", "tre_mm")}
            lines.append(f"- {method} beats {baseline} on EPE: {answer['epe_mm']}, on TRE: {answer['tre_mm']}")
    lines += ["", "global: the global model at the best global grid point; tissue_population: the spatial model with "
              "the per-class parameters chosen on the validation pairs; tissue_subject: the spatial model with "
              "parameters chosen on each test pair with its own labels (the labels that also score Dice, so its "
              "Dice is optimistic)."]
    if verdict.tissue_beats_control:
        lines[-1] += (f" {CONTROL_LABEL}: the spatial model with the global pair for every class; beating global "
                      "but not the control means the gain comes from the second network, not from the parameters.")
    if locality_csv is not None:
        with Path(locality_csv).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        lines += ["", "Locality of the spatial model per class (test pairs; near 1: a class's own parameters act "
                  "inside it as raising every class does; leakage near 0: they act nowhere else): "
                  + ", ".join(f"{r['class_name']} {float(r['locality']):.2f} (leakage {float(r['leakage']):.2f})"
                              for r in rows)]
    lines.append("")
    return atomic_write_text(out, "\n".join(lines))
