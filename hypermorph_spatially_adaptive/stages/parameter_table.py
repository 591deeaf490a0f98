"""``parameters.csv``: the identified regularization parameters handed from identification to inference.

One row per scope and class with the columns of :data:`COLUMNS`. A scope is ``global`` (one (lam, mu) pair
repeated for every class), ``population`` (per class, chosen over the evaluated pairs), ``population_refined``
(the population vector after ``--refine``), ``oracle`` (inference's ``tissue_oracle`` bound, chosen by the true
error on synthetic data) or a ``pair_id`` (subject-specific). Values are the dimensionless
loss weights the models are conditioned on: ``0 <= lam, mu`` and ``lam + mu <= 1``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..core.hyperparams import TOLERANCE
from ..files import atomic_write_csv

__all__ = ["COLUMNS", "GLOBAL", "POPULATION", "POPULATION_REFINED", "ORACLE", "ParameterRow", "ParameterTable",
           "read_parameters", "write_parameters", "with_subject_rows"]

COLUMNS = ("scope", "class_id", "class_name", "lam", "mu", "criterion", "score")
GLOBAL, POPULATION, POPULATION_REFINED, ORACLE = "global", "population", "population_refined", "oracle"
_SHARED_SCOPES = (GLOBAL, POPULATION, POPULATION_REFINED, ORACLE)


@dataclass(frozen=True)
class ParameterRow:
    """One row of ``parameters.csv``; ``score`` is the criterion's value at the chosen point (NaN if unknown)."""

    scope: str
    class_id: int
    class_name: str
    lam: float
    mu: float
    criterion: str
    score: float


class ParameterTable:
    """The rows of one ``parameters.csv``, indexed by scope; every scope covers classes ``0..C-1`` once."""

    def __init__(self, rows: Sequence[ParameterRow], class_names: Sequence[str], source: str = "parameters"):
        self.rows = list(rows)
        self.class_names = tuple(class_names)
        self.source = source
        self._by_scope: dict[str, list[ParameterRow]] = {}
        for row in self.rows:
            self._by_scope.setdefault(row.scope, []).append(row)
        for scope, scope_rows in self._by_scope.items():
            ids = sorted(r.class_id for r in scope_rows)
            if ids != list(range(len(self.class_names))):
                raise ValueError(f"{source}: scope {scope!r} must have one row for each class id "
                                 f"0..{len(self.class_names) - 1}, got class ids {ids}")
            scope_rows.sort(key=lambda r: r.class_id)

    @property
    def scopes(self) -> list[str]:
        return list(self._by_scope)

    @property
    def pair_ids(self) -> list[str]:
        """Scopes that are subject-specific (any scope other than the shared ones)."""
        return [s for s in self._by_scope if s not in _SHARED_SCOPES]

    def has(self, scope: str) -> bool:
        return scope in self._by_scope

    def values(self, scope: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class ``(lam, mu)`` of ``scope``, each a tensor ``[C]`` (float32, the models' input, by default)."""
        if scope not in self._by_scope:
            raise KeyError(f"{self.source}: no rows for scope {scope!r}; scopes present: {self.scopes}")
        rows = self._by_scope[scope]
        return (torch.tensor([r.lam for r in rows], dtype=dtype), torch.tensor([r.mu for r in rows], dtype=dtype))

    def hyper(self, scope: str) -> torch.Tensor:
        """The spatial model's input for ``scope``: ``[1, 2C]`` (all lambdas, then all mus)."""
        lam, mu = self.values(scope)
        return torch.cat([lam, mu]).unsqueeze(0)

    def global_pair(self) -> tuple[float, float]:
        """The single ``(lam, mu)`` of the ``global`` scope (the global model's input)."""
        lam, mu = self.values(GLOBAL)
        return float(lam[0]), float(mu[0])

    def subject_scope(self, pair_id: str, fallback: str = POPULATION) -> str:
        """``pair_id`` when the table has subject-specific rows for it, else ``fallback``."""
        return pair_id if pair_id in self._by_scope else fallback


def _parse_row(record: dict[str, str], line: int, source: str) -> ParameterRow:
    if None in record or None in record.values():  # csv.DictReader: extra fields under None, missing ones None
        fields = len(record) - (None in record) + len(record.get(None) or ()) - list(record.values()).count(None)
        raise ValueError(f"{source}, line {line}: expected {len(COLUMNS)} fields ({', '.join(COLUMNS)}), got "
                         f"{fields}")
    try:
        row = ParameterRow(scope=record["scope"].strip(), class_id=int(record["class_id"]),
                           class_name=record["class_name"].strip(), lam=float(record["lam"]),
                           mu=float(record["mu"]), criterion=record["criterion"].strip(),
                           score=float(record["score"]) if record["score"].strip() else math.nan)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}, line {line}: cannot read the row {record}: {error}") from None
    if not row.scope:
        raise ValueError(f"{source}, line {line}: empty scope")
    if not (-TOLERANCE <= row.lam and -TOLERANCE <= row.mu and row.lam + row.mu <= 1 + TOLERANCE):
        raise ValueError(f"{source}, line {line}: lam={row.lam}, mu={row.mu} must be >= 0 with lam + mu <= 1")
    return row


def read_parameters(path: str | Path, class_names: Sequence[str] | None = None) -> ParameterTable:
    """Read and check a ``parameters.csv``; ``class_names`` (a model's classes) must match the file's.

    Raises ValueError naming the file for missing columns, bad values, incomplete scopes or other classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--parameters {path}: file not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; a parameters.csv has columns {list(COLUMNS)}")
        rows = [_parse_row(record, line, str(path)) for line, record in enumerate(reader, start=2)]
    if not rows:
        raise ValueError(f"{path}: no parameter rows")
    names: dict[int, str] = {}
    for row in rows:
        if names.setdefault(row.class_id, row.class_name) != row.class_name:
            raise ValueError(f"{path}: class id {row.class_id} is named both {names[row.class_id]!r} "
                             f"and {row.class_name!r}")
    file_names = tuple(names[i] for i in sorted(names))
    if class_names is not None and tuple(class_names) != file_names:
        raise ValueError(f"{path}: classes {list(file_names)} do not match the model's classes {list(class_names)}")
    return ParameterTable(rows, file_names, source=str(path))


def write_parameters(path: str | Path, rows: Iterable[ParameterRow]) -> Path:
    """Write rows atomically to ``path`` with the columns :data:`COLUMNS` (floats at full precision)."""
    return atomic_write_csv(path, COLUMNS, ([r.scope, r.class_id, r.class_name, float(r.lam), float(r.mu), r.criterion,
                                             "" if math.isnan(r.score) else float(r.score)] for r in rows))


def with_subject_rows(base: ParameterTable, subjects: ParameterTable) -> list[ParameterRow]:
    """The shared scopes (global, population...) of ``base`` plus the subject-specific scopes of ``subjects``.

    Use it when the population was identified on one cohort and new pairs were identified on their own.
    """
    if base.class_names != subjects.class_names:
        raise ValueError(f"{subjects.source}: classes {list(subjects.class_names)} differ from those of "
                         f"{base.source}: {list(base.class_names)}")
    shared = [row for row in base.rows if row.scope in _SHARED_SCOPES]
    return shared + [row for row in subjects.rows if row.scope not in _SHARED_SCOPES]
