"""What an identification run says about the physics: the headroom of its grid and, on the phantom, whether the
identified stiffness follows the true materials.

``headroom.csv`` (:func:`write_headroom`, one row per foreground class; written when the grid has an end-point error,
i.e. a true displacement): :data:`HEADROOM_COLUMNS`, from :func:`~...evaluation.headroom.headroom` of the grid's
``epe_mm``. :func:`rank_lines` gives the summary's rank agreement (:mod:`~...evaluation.rank_agreement`) of the
shared per-class scopes with the phantom's nominal Young's moduli.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from ...data.phantom import TISSUES
from ...evaluation.headroom import ClassHeadroom, headroom
from ...evaluation.rank_agreement import rank_agreement
from ...files import atomic_write_csv
from ..parameter_table import POPULATION, POPULATION_REFINED, ParameterRow
from .grid_scores import GridScores

__all__ = ["HEADROOM_COLUMNS", "grid_headroom", "write_headroom", "rank_lines"]

HEADROOM_COLUMNS = ("class_id", "class_name", "global_lam", "global_mu", "global_epe_mm", "own_lam", "own_mu",
                    "own_epe_mm", "gain_mm", "pairs")


def grid_headroom(scores: GridScores) -> list[ClassHeadroom] | None:
    """Headroom of every foreground class by the grid's EPE; None when the grid has no finite EPE."""
    epe = scores.metrics.get("epe_mm")
    if epe is None or not bool(torch.isfinite(epe).any()):
        return None
    return headroom(epe.numpy(), scores.grid.numpy(), scores.class_names)


def write_headroom(path: str | Path, rows: Sequence[ClassHeadroom]) -> Path:
    """``headroom.csv`` with the columns :data:`HEADROOM_COLUMNS` (``pairs``: how many pairs score the class)."""
    def cell(value: float) -> float | str:
        return "" if math.isnan(value) else value

    return atomic_write_csv(path, HEADROOM_COLUMNS, ([r.class_id, r.class_name, r.global_lam, r.global_mu,
                                                      cell(r.global_score), r.own_lam, r.own_mu, cell(r.own_score),
                                                      cell(r.gain), len(r.pair_gains)] for r in rows))


def rank_lines(rows: Sequence[ParameterRow]) -> list[str]:
    """Summary lines: Spearman's correlation over the foreground classes between each shared per-class scope's
    stiffness (lam + mu, Young's modulus) and the phantom's nominal Young's moduli (``TISSUES``)."""
    true_young = {name: values["E"] for name, values in TISSUES.items()}
    lines = []
    for scope in (POPULATION, POPULATION_REFINED):
        chosen = {r.class_name: (r.lam, r.mu) for r in rows if r.scope == scope}
        if not chosen:
            continue
        result = rank_agreement(chosen, true_young)
        lines.append(f"Stiffness order, scope {scope}: Spearman over {result['classes']} foreground classes with the "
                     f"phantom's true Young's moduli: lam + mu {result['lam_plus_mu']:.2f}, Young's modulus "
                     f"{result['young']:.2f} (1 = the true order, NaN = all tied).")
    return lines
