"""Inference figures (matplotlib ``Figure`` objects, no pyplot state): a panel figure per pair, a Dice bar chart.

A pair figure has a first row fixed | moving | |fixed - moving| and one row per method: warped moving with its
warped label contours (the fixed contours dashed over it), the deformed grid and the Jacobian determinant map.
3D pairs show the central slice along the last array axis (the in-plane field components 0 and 1).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ...evaluation.statistics import describe
from ...files import atomic_write
from .pairs import PairResult

__all__ = ["pair_figure", "dice_bar_chart"]

GRID_LINES = 16  # about this many deformed-grid lines per axis, evenly spaced


def _plane(array: Any) -> np.ndarray:
    """``[*S]`` -> a 2D numpy slice (the central one along the last axis in 3D)."""
    array = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    return array if array.ndim == 2 else array[..., array.shape[-1] // 2]


def _contours(ax, labels: Any, num_classes: int, **style) -> None:
    if labels is None:
        return
    plane = _plane(labels)
    if plane.max() > plane.min():
        ax.contour(plane, levels=np.arange(num_classes - 1) + 0.5, linewidths=0.7, **style)


def _show(ax, image: np.ndarray, title: str, **style) -> Any:
    shown = ax.imshow(image, **{"cmap": "gray", **style})
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    return shown


def _grid(ax, displacement: Any) -> None:
    """Lines of constant fixed coordinate drawn at ``x + u(x)`` (in-plane components), in image orientation."""
    field = np.stack([_plane(c) for c in np.asarray(displacement.detach().cpu())[:2]])
    rows, cols = field.shape[1:]
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    y, x = ii + field[0], jj + field[1]
    step = max(1, round(max(rows, cols) / GRID_LINES))
    for i in range(0, rows, step):
        ax.plot(x[i], y[i], color="k", linewidth=0.5)
    for j in range(0, cols, step):
        ax.plot(x[:, j], y[:, j], color="k", linewidth=0.5)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_title("deformed grid", fontsize=8)
    ax.set_axis_off()


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def pair_figure(path: str | Path, item: dict[str, Any], results: dict[str, PairResult],
                class_names: Sequence[str]) -> Path:
    """Panels of one pair for every method in ``results`` (see the module docstring); written as PNG."""
    C = len(class_names)
    fixed, moving = _plane(item["fixed"][0]), _plane(item["moving"][0])
    fixed_labels = item["fixed_labels"][0] if "fixed_labels" in item else None
    fig = Figure(figsize=(9, 3 * (1 + len(results))), layout="tight")
    axes = fig.subplots(1 + len(results), 3, squeeze=False)
    shape = item["fixed"].shape[1:]
    where = "" if len(shape) == 2 else f", slice {shape[-1] // 2} of axis 2"
    _show(axes[0, 0], fixed, f"fixed ({item['pair_id']}{where})")
    _contours(axes[0, 0], fixed_labels, C, cmap="autumn")
    _show(axes[0, 1], moving, "moving")
    _contours(axes[0, 1], item["moving_labels"][0] if "moving_labels" in item else None, C, cmap="autumn")
    _show(axes[0, 2], np.abs(fixed - moving), "|fixed - moving|", cmap="magma")
    for row, (method, result) in zip(axes[1:], results.items()):
        dice = result.row.get("dice_mean", float("nan"))
        _show(row[0], _plane(result.warped), f"{method}: warped" + ("" if math.isnan(dice) else f", Dice {dice:.3f}"))
        _contours(row[0], fixed_labels, C, colors="w", linestyles="dashed")
        _contours(row[0], result.warped_labels, C, cmap="autumn")
        _grid(row[1], result.displacement)
        jacdet = _plane(result.jacdet)
        shown = _show(row[2], jacdet, f"det J (folds: {result.row['folding_percent']:.2f}%)", cmap="RdBu_r",
                      vmin=0.0, vmax=2.0)
        if (jacdet <= 0).any():
            row[2].contour(jacdet, levels=[0.0], colors="k", linewidths=0.7)
        fig.colorbar(shown, ax=row[2], fraction=0.046, pad=0.04)
    return _save(fig, Path(path))


def dice_bar_chart(path: str | Path, rows: Sequence[dict[str, Any]], class_names: Sequence[str],
                   methods: Sequence[str]) -> Path:
    """Mean ± std Dice per foreground class, one bar per method, over all pairs; written as PNG."""
    classes = list(class_names[1:])
    fig = Figure(figsize=(max(4.0, 0.6 * len(classes) * max(1, len(methods))), 3.2), layout="tight")
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        stats = [describe([float(r[f"dice_{c}"]) for r in rows if r["method"] == method]) for c in classes]
        means, stds = [s[1] for s in stats], [s[2] for s in stats]
        ax.bar(np.arange(len(classes)) + (k - (len(methods) - 1) / 2) * width, means, width, yerr=stds,
               label=method, capsize=2)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=20)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice per class ({len({r['pair_id'] for r in rows})} pairs)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, Path(path))
