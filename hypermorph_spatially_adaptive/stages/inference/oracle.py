"""Method ``tissue_oracle``: per-class parameters chosen by the true error, through the spatial model itself.

An upper reference, never a method for real data: it chooses by the end-point error against the true displacement,
which only synthetic data (the phantom) has. Starting from the population vector of ``--parameters``,
identification's coordinate search (:func:`..identification.refinement.refine_vector`, criterion ``epe``: the mean
over the oracle pairs of the mean over the foreground classes of the per-class EPE) tunes each foreground class's
``(lam, mu)`` with the spatial model on the pairs of ``--oracle-split``. The vector is chosen once, before the pairs
are registered, and written to ``OUT/oracle_parameters.csv`` (the ``parameters.csv`` schema, scope ``oracle``,
criterion ``epe``, ``score`` the class's mean EPE in mm on the oracle pairs); ``--resume`` reuses that file.

It tells what the spatial model can express when the parameters are chosen by the true error: if ``tissue_oracle``
does not beat ``global``, the model cannot express a gain; if it does while ``tissue_population`` does not,
identification cannot find it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..identification.refinement import Refinement, refine_vector
from ..parameter_table import ORACLE, ParameterRow, ParameterTable, read_parameters, write_parameters

__all__ = ["ORACLE_FILE", "oracle_rows", "read_oracle", "choose_oracle"]

#: The file in ``--out`` that holds the oracle's choice.
ORACLE_FILE = "oracle_parameters.csv"


def oracle_rows(result: Refinement, class_names: Sequence[str]) -> list[ParameterRow]:
    """``parameters.csv`` rows of scope ``oracle`` from a search by EPE: per class the chosen ``(lam, mu)`` and its
    mean EPE on the oracle pairs (Dice for a class absent from them, as :meth:`Refinement.class_score` says)."""
    return [ParameterRow(ORACLE, class_id, name, float(result.lam[class_id]), float(result.mu[class_id]),
                         *result.class_score(class_id, "epe")) for class_id, name in enumerate(class_names)]


def read_oracle(path: str | Path, class_names: Sequence[str]) -> ParameterTable:
    """An ``oracle_parameters.csv`` written by an earlier run (``--resume``); ValueError naming it when it does not
    hold the ``oracle`` scope of ``class_names``."""
    try:
        table = read_parameters(path, class_names=class_names)
    except ValueError as error:
        raise ValueError(f"--resume: {error}") from error
    if not table.has(ORACLE):
        raise ValueError(f"--resume: {path} has no rows of scope {ORACLE!r}; remove it to choose the oracle again")
    return table


def choose_oracle(model: torch.nn.Module, items: Sequence[dict[str, Any]], start: ParameterTable, scope: str,
                  path: str | Path, step: float, sweeps: int) -> tuple[ParameterTable, Refinement]:
    """Search the per-class vector by EPE from ``start``'s ``scope`` with the spatial elastic ``model`` on ``items``
    (each with ``fixed_labels`` and ``gt_displacement``) and write it to ``path``; returns the table and the search."""
    lam, mu = start.values(scope, torch.float64)  # the search's steps land on the lattice of the file's values
    result = refine_vector(model, items, lam, mu, step, "epe", sweeps)
    rows = oracle_rows(result, start.class_names)
    write_parameters(path, rows)
    return ParameterTable(rows, start.class_names, source=str(path)), result
