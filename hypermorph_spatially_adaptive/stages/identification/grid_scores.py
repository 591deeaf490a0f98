"""``grid_scores.csv``: every score of an identification run, and the shards it can be split into.

:class:`GridScores` holds the scores ``[P, G, C]`` (pairs, grid points, classes) and converts to and from the CSV
(long format, one row per pair, grid point and class: :data:`GRID_COLUMNS`, optionally :data:`EVAL_COLUMNS`).
``--shard K/N`` runs score the K-th slice of the sorted pair ids (:func:`shard_pair_ids`);
:func:`merge_grid_scores` combines them. TRE and EPE (end-point error against the true displacement) are in mm,
Dice in [0, 1]; NaN (an empty cell) where undefined.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ...files import atomic_write_csv

__all__ = ["GRID_COLUMNS", "EVAL_COLUMNS", "GridScores", "write_grid_scores", "read_grid_scores",
           "merge_grid_scores", "parse_shard", "shard_pair_ids"]

#: The columns of ``grid_scores.csv`` (long format: one row per pair, grid point and class). ``epe_mm`` is empty
#: without a true displacement.
GRID_COLUMNS = ("pair_id", "lam", "mu", "class_id", "class_name", "dice", "tre_mm", "epe_mm")
#: Extra columns written when other labels chose (``--selection-labels``): the same scores with the dataset's labels.
EVAL_COLUMNS = ("dice_eval", "tre_mm_eval", "epe_mm_eval")
#: The score columns a file may have: without and with the extra columns.
_SCORE_LAYOUTS = (GRID_COLUMNS[5:], GRID_COLUMNS[5:] + EVAL_COLUMNS)


@dataclass(frozen=True)
class GridScores:
    """Every score of an identification run.

    ``pair_ids`` (sorted), ``grid`` float64 ``[G, 2]`` in grid order, ``class_names`` (class id order) and
    ``metrics``: column name -> float64 ``[P, G, C]`` (``dice``, ``tre_mm``, ``epe_mm`` and, when other labels
    chose, ``dice_eval``, ``tre_mm_eval``, ``epe_mm_eval``; NaN where undefined). ``metrics`` is kept in that
    order, with the columns it lacks (but ``dice``) filled with NaN.
    """

    pair_ids: tuple[str, ...]
    grid: torch.Tensor
    class_names: tuple[str, ...]
    metrics: dict[str, torch.Tensor]

    @property
    def dice(self) -> torch.Tensor:
        return self.metrics["dice"]

    @property
    def tre_mm(self) -> torch.Tensor:
        return self.metrics["tre_mm"]

    @property
    def epe_mm(self) -> torch.Tensor:
        return self.metrics["epe_mm"]

    def __post_init__(self) -> None:
        names = GRID_COLUMNS[5:] + (EVAL_COLUMNS if any(n in self.metrics for n in EVAL_COLUMNS) else ())
        unknown = [n for n in self.metrics if n not in names]
        if "dice" not in self.metrics or unknown:
            raise ValueError(f"grid scores need a dice column and only the columns {list(names)}, got "
                             f"{list(self.metrics)}")
        like = self.metrics["dice"]
        object.__setattr__(self, "metrics", {n: self.metrics[n] if n in self.metrics else
                                             torch.full_like(like, math.nan) for n in names})

    @classmethod
    def for_pair(cls, pair_id: str, grid: torch.Tensor, class_names: Sequence[str],
                 scores: dict[str, torch.Tensor]) -> "GridScores":
        """One pair's :func:`~.scoring.evaluate_pair` result as a ``GridScores`` with P = 1."""
        return cls((pair_id,), grid, tuple(class_names), {name: values[None] for name, values in scores.items()})


def _cell(value: float) -> Any:
    return "" if math.isnan(value) else value


def write_grid_scores(path: str | Path, scores: GridScores) -> Path:
    """Write ``scores`` atomically, one row per pair, grid point and class, in that order (floats at full precision)."""
    names = list(scores.metrics)
    values = {name: scores.metrics[name].tolist() for name in names}
    grid = scores.grid.tolist()

    def rows():
        for p, pair_id in enumerate(scores.pair_ids):
            for g, (lam, mu) in enumerate(grid):
                for c, class_name in enumerate(scores.class_names):
                    yield [pair_id, lam, mu, c, class_name] + [_cell(values[name][p][g][c]) for name in names]

    return atomic_write_csv(path, GRID_COLUMNS[:5] + tuple(names), rows())


def read_grid_scores(path: str | Path) -> GridScores:
    """Read a ``grid_scores.csv``; every pair must cover the same grid points and classes exactly once.

    Raises ValueError naming the file for missing columns, unreadable values or an incomplete table.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        names = header[5:]
        if header[:5] != GRID_COLUMNS[:5] or names not in _SCORE_LAYOUTS:
            raise ValueError(f"{path}: columns {list(header)}; a grid_scores.csv has columns {list(GRID_COLUMNS)} "
                             f"(optionally followed by {list(EVAL_COLUMNS)})")
        cells: dict[tuple[str, tuple[float, float], int], list[float]] = {}
        class_names: dict[int, str] = {}
        for line, row in enumerate(reader, start=2):
            try:
                if len(row) != len(header):
                    raise ValueError
                key = (row[0], (float(row[1]), float(row[2])), int(row[3]))
                values = [float(v) if v.strip() else math.nan for v in row[5:]]
            except ValueError:
                raise ValueError(f"{path}, line {line}: cannot read the row {row}") from None
            if key in cells:
                raise ValueError(f"{path}, line {line}: a second row for pair, (lam, mu), class {key}")
            if class_names.setdefault(key[2], row[4]) != row[4]:
                raise ValueError(f"{path}, line {line}: class id {key[2]} is named both {class_names[key[2]]!r} "
                                 f"and {row[4]!r}")
            cells[key] = values
    pair_ids = sorted({key[0] for key in cells})
    points = sorted({key[1] for key in cells})
    if not cells or sorted(class_names) != list(range(len(class_names))):
        raise ValueError(f"{path}: no rows, or class ids {sorted(class_names)} are not 0..C-1")
    shape = (len(pair_ids), len(points), len(class_names))
    if len(cells) != math.prod(shape):
        raise ValueError(f"{path}: {len(cells)} rows, but {len(pair_ids)} pairs x {len(points)} grid points x "
                         f"{len(class_names)} classes need {math.prod(shape)}: some pair misses grid points or classes")
    try:
        table = torch.tensor([[[cells[(p, point, c)] for c in range(shape[2])] for point in points]
                              for p in pair_ids], dtype=torch.float64)
    except KeyError as error:
        raise ValueError(f"{path}: no row for (pair, (lam, mu), class) {error.args[0]}") from None
    metrics = {name: table[..., k] for k, name in enumerate(names)}
    return GridScores(tuple(pair_ids), torch.tensor(points, dtype=torch.float64),
                      tuple(class_names[c] for c in range(shape[2])), metrics)


def merge_grid_scores(parts: Sequence[GridScores], sources: Sequence[str]) -> GridScores:
    """Combine the scores of disjoint pair sets (shards) into one table, pairs sorted.

    ``sources`` name the parts in error messages. Raises ValueError when grids, classes or columns differ, or
    when a pair appears in two parts.
    """
    if not parts:
        raise ValueError("nothing to merge")
    first, owner = parts[0], {}
    for part, source in zip(parts, sources):
        if not torch.equal(part.grid, first.grid):
            raise ValueError(f"{source}: its grid ({part.grid.shape[0]} points) differs from that of {sources[0]} "
                             f"({first.grid.shape[0]} points)")
        if part.class_names != first.class_names or list(part.metrics) != list(first.metrics):
            raise ValueError(f"{source}: classes {part.class_names} / columns {list(part.metrics)} differ from "
                             f"{sources[0]}: {first.class_names} / {list(first.metrics)}")
        for pair_id in part.pair_ids:
            if pair_id in owner:
                raise ValueError(f"pair {pair_id!r} is in both {owner[pair_id]} and {source}")
            owner[pair_id] = source
    pairs = sorted((pair_id, k, p) for k, part in enumerate(parts) for p, pair_id in enumerate(part.pair_ids))
    metrics = {name: torch.stack([parts[k].metrics[name][p] for _, k, p in pairs]) for name in first.metrics}
    return GridScores(tuple(pair_id for pair_id, _, _ in pairs), first.grid, first.class_names, metrics)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N`` (1-based K, for array jobs)."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 2/8), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: need 1 <= K <= N")
    return k, n


def shard_pair_ids(pair_ids: Sequence[str], k: int, n: int) -> list[str]:
    """The K-th of N slices of the sorted pair ids: ``sorted(pair_ids)[K - 1::N]``."""
    return sorted(pair_ids)[k - 1::n]
