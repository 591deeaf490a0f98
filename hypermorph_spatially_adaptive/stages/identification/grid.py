"""The (lam, mu) grid of parameter identification.

:func:`simplex_grid` and :func:`value_grid` build the grid ``[G, 2]`` (float64 ``(lam, mu)``, ``lam + mu <= 1``)
in *grid order*: ascending lam, then ascending mu. (0, 0) is evaluated but never chosen (:func:`allowed_points`).
Values are the dimensionless loss weights the models are conditioned on.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ...core.hyperparams import TOLERANCE

__all__ = ["simplex_grid", "parse_values", "value_grid", "grid_index", "allowed_points"]


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


def allowed_points(grid: torch.Tensor) -> torch.Tensor:
    """Grid points that may be chosen ``[G]``: all but (0, 0) (no regularization at all)."""
    return ~((grid[:, 0] == 0) & (grid[:, 1] == 0))
