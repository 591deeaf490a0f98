"""Identification heatmaps over the (lam, mu) simplex.

Heatmaps (matplotlib, Agg), one PNG per scope and class: each grid point is drawn as a cell of the lam x mu
lattice (cell edges halfway between neighbouring values), so the simplex ``lam + mu <= 1`` appears as a staircase
triangle; points off the simplex stay blank. The chosen point is marked with a star.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ...files import atomic_write  # noqa: E402
from ..parameter_table import ParameterRow  # noqa: E402
from .choice import scope_class_scores  # noqa: E402
from .grid_scores import GridScores  # noqa: E402

__all__ = ["simplex_heatmap", "write_scope_figures"]

_LABELS = {"dice": "Dice (mean over pairs)", "tre": "TRE in mm (mean over pairs)",
           "epe": "EPE in mm (mean over pairs)"}


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres: halfway between neighbours, half a spacing beyond the ends."""
    if len(values) == 1:
        return np.array([values[0] - 0.05, values[0] + 0.05])
    middle = (values[1:] + values[:-1]) / 2
    return np.concatenate([[2 * values[0] - middle[0]], middle, [2 * values[-1] - middle[-1]]])


def simplex_heatmap(grid: torch.Tensor, values: torch.Tensor, chosen: tuple[float, float], title: str,
                    label: str, path: str | Path, higher_is_better: bool = True) -> Path:
    """Draw ``values`` ``[G]`` at the grid points ``[G, 2]`` (lam, mu) with ``chosen`` marked; write a PNG atomically.

    The colour map runs from bad (dark) to good (bright) whichever way ``higher_is_better`` points.
    """
    points = grid.numpy()
    lams, mus = np.unique(points[:, 0]), np.unique(points[:, 1])
    image = np.full((len(mus), len(lams)), np.nan)
    for (lam, mu), value in zip(points, values.tolist()):
        image[np.searchsorted(mus, mu), np.searchsorted(lams, lam)] = value
    figure, axes = plt.subplots(figsize=(4.6, 3.8), dpi=90)
    cells = axes.pcolormesh(_edges(lams), _edges(mus), np.ma.masked_invalid(image), shading="flat",
                            cmap="viridis" if higher_is_better else "viridis_r")
    figure.colorbar(cells, ax=axes, label=label)
    axes.plot([chosen[0]], [chosen[1]], marker="*", markersize=14, color="red", markeredgecolor="white",
              linestyle="none", label=f"chosen ({chosen[0]:.3g}, {chosen[1]:.3g})")
    axes.set_xlabel("lambda")
    axes.set_ylabel("mu")
    axes.set_aspect("equal")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper right", fontsize=8, framealpha=0.8)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)


def write_scope_figures(folder: str | Path, scores: GridScores, rows: Sequence[ParameterRow],
                        pairs: Sequence[int]) -> list[Path]:
    """One heatmap per class of ``rows`` (a single scope): the class's mean score over ``pairs`` by the row's
    criterion, chosen point marked. Files ``folder/<scope>_<class_name>.png``."""
    written = []
    for row in rows:
        values = scope_class_scores(scores, pairs, row.class_id, row.criterion)
        score = "n/a" if math.isnan(row.score) else f"{row.score:.4g}"
        title = f"{row.scope}: {row.class_name} ({row.criterion} {score})"
        path = Path(folder) / f"{row.scope}_{row.class_name}.png"
        written.append(simplex_heatmap(scores.grid, values, (row.lam, row.mu), title, _LABELS[row.criterion], path,
                                       higher_is_better=row.criterion == "dice"))
    return written
