"""Parameter identification: score the global model over a (lam, mu) grid and choose per-class parameters.

The functional core behind ``parameter_identification.py``:

- :func:`simplex_grid` / :func:`value_grid` build the grid ``[G, 2]`` (float64 ``(lam, mu)``, ``lam + mu <= 1``)
  in *grid order*: ascending lam, then ascending mu. (0, 0) is evaluated but never chosen.
- :func:`evaluate_pair` (from ``identification_scoring.py``, re-exported here) scores a pair over the grid: Dice
  and TRE per class ``[G, C]``, many grid points per forward pass.
- :class:`GridScores` holds every score ``[P, G, C]`` and converts to and from ``grid_scores.csv``
  (:func:`write_grid_scores`, :func:`read_grid_scores`, :func:`merge_grid_scores` for shards).
- :func:`choose_parameters` turns grid scores alone into ``parameters.csv`` rows (global, population and
  subject-specific scopes), so a merge of shards chooses exactly as a single run does.

Values are the dimensionless loss weights the models are conditioned on; TRE is in mm, Dice in [0, 1].
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .identification_scoring import (ScoringTargets, class_tre, default_grid_batch, evaluate_pair,
                                     score_displacements, scoring_targets)
from .parameter_table import GLOBAL, POPULATION, ParameterRow
from .runtime import atomic_write_csv

__all__ = ["GRID_COLUMNS", "EVAL_COLUMNS", "CRITERIA", "BACKGROUND_POLICIES", "GridScores", "simplex_grid",
           "value_grid", "parse_values", "grid_index", "class_tre", "ScoringTargets", "scoring_targets",
           "score_displacements", "evaluate_pair", "default_grid_batch", "write_grid_scores", "read_grid_scores",
           "merge_grid_scores", "objective", "scope_class_scores", "class_criterion", "best_index",
           "choose_parameters", "parse_shard", "shard_pair_ids"]

#: The contract's columns of ``grid_scores.csv``.
GRID_COLUMNS = ("pair_id", "lam", "mu", "class_id", "class_name", "dice", "tre_mm")
#: Extra columns written when other labels chose (``--selection-labels``): the same scores with the dataset's labels.
EVAL_COLUMNS = ("dice_eval", "tre_mm_eval")
CRITERIA = ("dice", "tre")
BACKGROUND_POLICIES = ("global", "population", "fixed")
#: Slack on ``lam + mu <= 1`` and on whole numbers of grid steps.
TOLERANCE = 1e-6


# --------------------------------------------------------------------------------------------- grids

def simplex_grid(step: float) -> torch.Tensor:
    """All ``(i * step, j * step)`` with ``i + j <= n = 1 / step``: ``[(n + 1)(n + 2) / 2, 2]`` float64.

    Points are ``i / n`` (integer arithmetic, so 0.3 is 0.3 and not 0.1 + 0.1 + 0.1). ``step`` must divide 1 into a
    whole number of steps (within 1e-6); step 0.1 gives 66 points.
    """
    step = float(step)
    if not 0.0 < step <= 1.0:
        raise ValueError(f"--grid-step must lie in (0, 1], got {step}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > TOLERANCE:
        raise ValueError(f"--grid-step {step}: 1 must be a whole number of steps (e.g. 0.1, 0.125, 0.25, 0.5)")
    return torch.tensor([(i / n, j / n) for i in range(n + 1) for j in range(n + 1 - i)], dtype=torch.float64)


def parse_values(tokens: Sequence[str], flag: str) -> list[float]:
    """Values in [0, 1] from tokens that are numbers or inclusive ranges ``START:STOP:STEP`` (sorted, unique)."""
    values = set()
    for token in tokens:
        try:
            parts = [float(p) for p in str(token).split(":")]
        except ValueError:
            raise ValueError(f"{flag}: {token!r} is neither a number nor a range START:STOP:STEP") from None
        if len(parts) == 3:
            start, stop, step = parts
            count = round((stop - start) / step) if step > 0 else -1
            if count < 0 or abs(start + count * step - stop) > TOLERANCE:
                raise ValueError(f"{flag}: range {token!r} needs STEP > 0 and a whole number of steps to STOP")
            parts = [start + k * step for k in range(count + 1)]
        elif len(parts) != 1:
            raise ValueError(f"{flag}: {token!r} is neither a number nor a range START:STOP:STEP")
        for value in parts:
            if not -TOLERANCE <= value <= 1.0 + TOLERANCE:
                raise ValueError(f"{flag}: values must lie in [0, 1], got {value}")
            values.add(round(min(max(value, 0.0), 1.0), 12))  # rounding removes float drift such as 0.30000000000000004
    return sorted(values)


def value_grid(lam_values: Sequence[float], mu_values: Sequence[float]) -> torch.Tensor:
    """Every ``(lam, mu)`` of the two value lists with ``lam + mu <= 1``, in grid order: ``[G, 2]`` float64."""
    points = [(lam, mu) for lam in sorted(set(lam_values)) for mu in sorted(set(mu_values))
              if lam + mu <= 1.0 + TOLERANCE]
    if not points:
        raise ValueError("--lam-values/--mu-values: no combination satisfies lam + mu <= 1")
    return torch.tensor(points, dtype=torch.float64)


def grid_index(grid: torch.Tensor, lam: float, mu: float) -> int | None:
    """Index of the point ``(lam, mu)`` in ``grid`` ``[G, 2]`` (each within :data:`TOLERANCE`); None when off it."""
    match = torch.nonzero((grid - torch.tensor([lam, mu], dtype=grid.dtype)).abs().amax(1) <= TOLERANCE)
    return int(match[0]) if len(match) else None


def _allowed(grid: torch.Tensor) -> torch.Tensor:
    """Grid points that may be chosen ``[G]``: all but (0, 0) (no regularization at all)."""
    return ~((grid[:, 0] == 0) & (grid[:, 1] == 0))


# --------------------------------------------------------------------------------------------- grid_scores.csv

@dataclass(frozen=True)
class GridScores:
    """Every score of an identification run.

    ``pair_ids`` (sorted), ``grid`` float64 ``[G, 2]`` in grid order, ``class_names`` (class id order) and
    ``metrics``: column name -> float64 ``[P, G, C]`` (``dice``, ``tre_mm`` and optionally ``dice_eval``,
    ``tre_mm_eval``; NaN where undefined).
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

    @classmethod
    def for_pair(cls, pair_id: str, grid: torch.Tensor, class_names: Sequence[str],
                 scores: dict[str, torch.Tensor]) -> "GridScores":
        """One pair's :func:`evaluate_pair` result as a ``GridScores`` with P = 1."""
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
        if header[:7] != GRID_COLUMNS or names not in (GRID_COLUMNS[5:], GRID_COLUMNS[5:] + EVAL_COLUMNS):
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


# --------------------------------------------------------------------------------------------- selection

def objective(dice: torch.Tensor, tre_mm: torch.Tensor, criterion: str) -> torch.Tensor:
    """The one number a shared parameter choice optimises, from per-class scores ``[P, K, C]`` -> ``[K]``.

    ``dice``: mean over pairs of the foreground mean Dice (higher is better; background excluded, it is large
    whatever the parameters). ``tre``: mean over pairs of the mean of the per-class TRE over classes with
    keypoints (lower is better, mm). NaNs are ignored.
    """
    per_pair = dice[..., 1:].nanmean(-1) if criterion == "dice" else tre_mm.nanmean(-1)
    return per_pair.nanmean(0)


def class_criterion(scores: GridScores, pairs: Sequence[int], class_id: int, criterion: str) -> str:
    """``tre`` when asked for and the class has keypoints in ``pairs``; otherwise ``dice`` (the fallback)."""
    if criterion == "tre" and bool(torch.isfinite(scores.tre_mm[list(pairs), :, class_id]).any()):
        return "tre"
    return "dice"


def scope_class_scores(scores: GridScores, pairs: Sequence[int], class_id: int, kind: str) -> torch.Tensor:
    """Mean over ``pairs`` of one class's ``kind`` (dice or tre) score at every grid point: float64 ``[G]``."""
    values = scores.dice if kind == "dice" else scores.tre_mm
    return values[list(pairs), :, class_id].nanmean(0)


def best_index(values: torch.Tensor, allowed: torch.Tensor, higher_is_better: bool) -> int:
    """Index of the best finite value among ``allowed`` ``[G]``; ties go to the first in grid order.

    When no allowed value is finite, the first allowed index (its score is NaN).
    """
    key = values if higher_is_better else -values
    key = torch.where(allowed & torch.isfinite(key), key, torch.full_like(key, -math.inf))
    if bool((key == -math.inf).all()):
        return int(torch.nonzero(allowed)[0])
    return int(torch.argmax(key))  # argmax returns the first of equal maxima


def _scope_rows(scope: str, scores: GridScores, pairs: Sequence[int], criterion: str, background: str,
                global_index: int, background_value: tuple[float, float]) -> list[ParameterRow]:
    """Per-class choices over ``pairs``; the background class follows the ``background`` policy."""
    allowed = _allowed(scores.grid)
    rows = []
    for class_id, class_name in enumerate(scores.class_names):
        kind = class_criterion(scores, pairs, class_id, criterion)
        values = scope_class_scores(scores, pairs, class_id, kind)
        if class_id == 0 and background == "fixed":
            lam, mu = background_value
            index = grid_index(scores.grid, lam, mu)
            score = math.nan if index is None else float(values[index])
            rows.append(ParameterRow(scope, class_id, class_name, float(lam), float(mu), kind, score))
            continue
        if class_id == 0 and background == "global":
            index = global_index
        else:
            index = best_index(values, allowed, higher_is_better=kind == "dice")
        lam, mu = scores.grid[index].tolist()
        rows.append(ParameterRow(scope, class_id, class_name, lam, mu, kind, float(values[index])))
    return rows


def choose_parameters(scores: GridScores, criterion: str = "dice", background: str = "global",
                      background_value: tuple[float, float] = (0.1, 0.1)) -> list[ParameterRow]:
    """``parameters.csv`` rows from grid scores alone (no model, no data).

    Scopes, in this order: ``global`` (the grid point best by :func:`objective` over all pairs, repeated for every
    class), ``population`` (per class, the best mean over all pairs) and one scope per pair id (per class, best
    for that pair). Dice is maximised, TRE minimised; a class without keypoints in the scope falls back to Dice
    (its row's ``criterion`` says ``dice``). (0, 0) is never chosen; ties go to the first point in grid order.
    ``score`` is the class's criterion value at the chosen point (mean over the scope's pairs).

    The background class (id 0) gets the global point (``background="global"``; its Dice is large whatever the
    parameters, so choosing by it picks noise), its own best point (``"population"``) or ``background_value``
    (``"fixed"``; score NaN when that point is not on the grid).
    """
    if criterion not in CRITERIA or background not in BACKGROUND_POLICIES:
        raise ValueError(f"criterion must be one of {CRITERIA} and background one of {BACKGROUND_POLICIES}, "
                         f"got {criterion!r} and {background!r}")
    allowed = _allowed(scores.grid)
    if not bool(allowed.any()):
        raise ValueError("the grid holds only (0, 0), which is never chosen; use a finer --grid-step or more values")
    everyone = list(range(len(scores.pair_ids)))
    global_index = best_index(objective(scores.dice, scores.tre_mm, criterion), allowed, criterion == "dice")
    lam, mu = scores.grid[global_index].tolist()
    rows = []
    for class_id, class_name in enumerate(scores.class_names):
        kind = class_criterion(scores, everyone, class_id, criterion)
        score = float(scope_class_scores(scores, everyone, class_id, kind)[global_index])
        rows.append(ParameterRow(GLOBAL, class_id, class_name, lam, mu, kind, score))
    rows += _scope_rows(POPULATION, scores, everyone, criterion, background, global_index, background_value)
    for p, pair_id in enumerate(scores.pair_ids):
        rows += _scope_rows(pair_id, scores, [p], criterion, background, global_index, background_value)
    return rows


# --------------------------------------------------------------------------------------------- shards

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
