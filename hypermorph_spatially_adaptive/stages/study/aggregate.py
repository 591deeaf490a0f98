"""Collect the study's per-pair results over seeds and turn them into estimates with 95% intervals.

Per seed and variant, ``inference/metrics.csv`` gives the methods global, tissue_population, tissue_subject, the
control (inference method ``literature`` at the global pair) and the model oracle (``tissue_oracle``);
``inference_epe/metrics.csv`` gives the identification oracle (``tissue_population`` with the parameters chosen by
EPE) and, when the study ran the instance optimisation, ``inference_io/metrics.csv`` the optimised methods and
elastix. Pairs are matched by id, so differences between methods are paired. Intervals are two-stage bootstraps
over seeds and pairs (:mod:`...evaluation.bootstrap`).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ...data.phantom import TISSUES
from ...evaluation.bootstrap import Estimate, hierarchical_bootstrap, paired_estimate
from ...evaluation.headroom import headroom_from_rows
from ...evaluation.rank_agreement import rank_agreement
from ..parameter_table import POPULATION, POPULATION_REFINED, read_parameters
from .presets import CONTROL, GLOBAL
from .runner import seed_folder

__all__ = ["INFERENCE_NAMES", "METHOD_ORDER", "IDENTIFICATIONS", "StudyData", "collect", "estimate", "difference",
           "locality_estimate", "stiffness", "grid_headroom", "stiffness_rank_agreement"]

#: The identifications of a seed whose choices the report reads: folder -> what chose the values.
IDENTIFICATIONS = {"identification_val": "the paper's search: the global model's grid, Dice (validation pairs)",
                   "identification_epe": "oracle: the global model's grid, true EPE (validation pairs)",
                   "identification_joint": "the joint search: through the spatial model, Dice (validation pairs)",
                   "identification_io": "the instance optimisation's grid, TRE (validation pairs)"}

#: Inference method -> report method, for ``inference/`` and ``inference_epe/``.
INFERENCE_NAMES = {"inference": {"global": GLOBAL, "tissue_population": "tissue_population",
                                 "tissue_subject": "tissue_subject", "literature": CONTROL,
                                 "tissue_oracle": "oracle_model"},
                   "inference_epe": {"tissue_population": "oracle_identification"},
                   "inference_joint": {"tissue_population": "tissue_joint"},
                   "inference_io": {"global+io": "global+io", "tissue_population+io": "tissue_population+io",
                                    "identity+io": "classical", "elastix": "elastix"}}
#: Stages whose results exist only for some variants or presets.
OPTIONAL_STAGES = ("inference_io", "inference_joint")
METHOD_ORDER = (GLOBAL, "tissue_population", "tissue_joint", "tissue_subject", CONTROL, "oracle_identification",
                "oracle_model",
                "global+io", "tissue_population+io", "classical", "elastix")


def _float(text: str | None) -> float:
    return math.nan if text in ("", None) else float(text)


@dataclass
class StudyData:
    """Everything read back: ``rows[variant][method][seed]`` maps pair id -> metrics row (floats);
    ``locality[variant][seed]`` maps class name -> (locality, leakage); ``class_names`` of the phantom."""

    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    rows: dict = field(default_factory=dict)
    locality: dict = field(default_factory=dict)

    def methods(self, variant: str) -> list[str]:
        return [m for m in METHOD_ORDER if m in self.rows.get(variant, {})]

    def values(self, variant: str, method: str, metric: str) -> list[list[float]]:
        """Per seed, the metric of every pair in pair-id order (the same order for every method)."""
        groups = []
        for seed in self.seeds:
            by_pair = self.rows[variant][method].get(seed, {})
            reference = self.rows[variant][GLOBAL].get(seed, by_pair)
            groups.append([by_pair[p].get(metric, math.nan) if p in by_pair else math.nan for p in sorted(reference)])
        return groups


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def collect(out: Path, seeds: Sequence[int], variants: Sequence[str]) -> StudyData:
    """Read every seed's results under ``out`` (missing files raise ValueError naming them)."""
    data = StudyData(tuple(seeds), tuple(variants))
    for variant in variants:
        data.rows[variant], data.locality[variant] = {}, {}
        for seed in seeds:
            folder = seed_folder(out, seed) / variant
            for stage, names in INFERENCE_NAMES.items():
                path = folder / stage / "metrics.csv"
                if not path.is_file() and stage in OPTIONAL_STAGES:
                    continue
                if not path.is_file():
                    raise ValueError(f"{path}: missing (run the study for seed {seed} first)")
                for row in _read_rows(path):
                    method = names.get(row["method"])
                    if method is not None:
                        values = {key: _float(value) for key, value in row.items()
                                  if key not in ("pair_id", "method", "parameters_source")}
                        data.rows[variant].setdefault(method, {}).setdefault(seed, {})[row["pair_id"]] = values
            path = folder / "locality" / "locality.csv"
            if not path.is_file():
                raise ValueError(f"{path}: missing (run the study for seed {seed} first)")
            rows = _read_rows(path)
            data.locality[variant][seed] = {row["class_name"]: (float(row["locality"]), float(row["leakage"]))
                                            for row in rows}
    first = seed_folder(out, seeds[0]) / "identification_val" / "parameters.csv"
    data.class_names = read_parameters(first).class_names
    return data


def estimate(data: StudyData, variant: str, method: str, metric: str) -> Estimate:
    """Mean of ``metric`` over every seed's pairs with its 95% interval."""
    return hierarchical_bootstrap(data.values(variant, method, metric))


def difference(data: StudyData, variant: str, method: str, baseline: str, metric: str) -> Estimate:
    """Paired difference ``method - baseline`` of ``metric`` (lower is better for distances and strain)."""
    return paired_estimate(data.values(variant, method, metric), data.values(variant, baseline, metric))


def locality_estimate(data: StudyData, variant: str, class_name: str, which: int) -> Estimate:
    """Locality (``which`` 0) or leakage (1) of a class: mean over seeds, interval over seeds."""
    return hierarchical_bootstrap([[data.locality[variant][seed][class_name][which]] for seed in data.seeds])


def _population_scope(table) -> str:
    return POPULATION_REFINED if table.has(POPULATION_REFINED) else POPULATION


def stiffness(out: Path, seed: int, folder: str) -> dict[str, float]:
    """``lam + mu`` per class of the population scope of ``seed``'s identification ``folder`` (its refined
    population after a joint search)."""
    table = read_parameters(seed_folder(out, seed) / folder / "parameters.csv")
    lam, mu = table.values(_population_scope(table))
    return {name: float(l + m) for name, l, m in zip(table.class_names, lam, mu)}


def grid_headroom(out: Path, seeds: Sequence[int], folder: str) -> dict[str, Estimate]:
    """Per foreground class, the EPE headroom of ``folder``'s grid (:func:`...evaluation.headroom.headroom`: the
    mean EPE at the best global grid point minus at the class's own best point, validation pairs; mm), mean over
    every seed's pairs with its 95% interval. Empty when a seed has no such grid or no ``epe_mm`` column."""
    gains: dict[str, list[list[float]]] = {}
    for seed in seeds:
        path = seed_folder(out, seed) / folder / "grid_scores.csv"
        if not path.is_file():
            return {}
        rows = _read_rows(path)
        if not rows or "epe_mm" not in rows[0]:
            return {}
        table = [(r["pair_id"], float(r["lam"]), float(r["mu"]), r["class_name"], _float(r["epe_mm"])) for r in rows]
        for entry in headroom_from_rows(table):
            gains.setdefault(entry.class_name, []).append(list(entry.pair_gains))
    return {name: hierarchical_bootstrap(groups) for name, groups in gains.items()}


def stiffness_rank_agreement(out: Path, seed: int, folder: str) -> dict[str, float] | None:
    """Spearman of the population ``(lam, mu)`` of ``seed``'s ``folder`` with the phantom's true Young's moduli
    (:func:`...evaluation.rank_agreement.rank_agreement`); None when that identification was not run."""
    path = seed_folder(out, seed) / folder / "parameters.csv"
    if not path.is_file():
        return None
    table = read_parameters(path)
    lam, mu = table.values(_population_scope(table))
    identified = {name: (float(l), float(m)) for name, l, m in zip(table.class_names, lam, mu)}
    return rank_agreement(identified, {name: tissue["E"] for name, tissue in TISSUES.items()})
