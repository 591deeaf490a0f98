"""Inference figures (matplotlib ``Figure`` objects, no pyplot state): a panel figure per pair, a Dice bar chart.

A pair figure has a first row fixed | moving | |fixed - moving| and one row per method: warped moving with its
warped label contours (the fixed contours dashed over it), the deformed grid and the Jacobian determinant map.
3D pairs show the central slice along the last array axis (the in-plane field components 0 and 1). Every panel is
oriented as a viewer shows it, from the fixed image's affine (:func:`...data.orientation.display_view`: superior
or anterior up, the patient's right on the left), with square millimetres; the letters on the fixed panel name
its edges.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ...data.orientation import DisplayView, display_view
from ...evaluation.statistics import describe
from ...files import atomic_write
from .pairs import PairResult

__all__ = ["pair_figure", "dice_bar_chart"]

GRID_LINES = 16  # about this many deformed-grid lines per axis, evenly spaced


def _slice(array: Any) -> np.ndarray:
    """``[*S]`` -> a 2D numpy slice in array order (the central one along the last axis in 3D)."""
    array = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    return array if array.ndim == 2 else array[..., array.shape[-1] // 2]


class _Panels:
    """Draws the slices of one pair oriented by ``view`` with pixels of ``aspect`` (height / width)."""

    def __init__(self, view: DisplayView, aspect: float):
        self.view, self.aspect = view, aspect

    def plane(self, array: Any) -> np.ndarray:
        return self.view.image(_slice(array))

    def show(self, ax, array: Any, title: str, **style) -> Any:
        shown = ax.imshow(self.plane(array), aspect=self.aspect, **{"cmap": "gray", **style})
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
        return shown

    def contours(self, ax, labels: Any, num_classes: int, **style) -> None:
        if labels is None:
            return
        plane = self.plane(labels)
        if plane.max() > plane.min():
            ax.contour(plane, levels=np.arange(num_classes - 1) + 0.5, linewidths=0.7, **style)

    def edges(self, ax) -> None:
        """The anatomical letters at the middle of each edge of the panel."""
        top, bottom, left, right = self.view.edges
        style = dict(transform=ax.transAxes, color="yellow", fontsize=7, ha="center", va="center")
        for (x, y), letter in (((0.5, 0.96), top), ((0.5, 0.04), bottom), ((0.03, 0.5), left), ((0.97, 0.5), right)):
            ax.text(x, y, letter, **style)

    def grid(self, ax, displacement: Any) -> None:
        """Lines of constant fixed coordinate drawn at ``x + u(x)`` (in-plane components), displayed as the
        images are."""
        field = np.stack([_slice(c) for c in np.asarray(displacement.detach().cpu())[:2]])
        shape = field.shape[1:]
        ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        rows, cols = self.view.points(ii + field[0], jj + field[1], shape)
        step = max(1, round(max(shape) / GRID_LINES))
        for i in range(0, shape[0], step):
            ax.plot(cols[i], rows[i], color="k", linewidth=0.5)
        for j in range(0, shape[1], step):
            ax.plot(cols[:, j], rows[:, j], color="k", linewidth=0.5)
        n_rows, n_cols = self.view.image(field[0]).shape
        ax.set_xlim(-0.5, n_cols - 0.5)
        ax.set_ylim(n_rows - 0.5, -0.5)
        ax.set_aspect(self.aspect)
        ax.set_title("deformed grid", fontsize=8)
        ax.set_axis_off()


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def pair_figure(path: str | Path, item: dict[str, Any], results: dict[str, PairResult],
                class_names: Sequence[str]) -> Path:
    """Panels of one pair for every method in ``results`` (see the module docstring); written as PNG."""
    C = len(class_names)
    view = display_view(np.asarray(item["affine"], dtype=np.float64), (0, 1))
    panels = _Panels(view, view.aspect([float(s) for s in item["spacing"][:2]]))
    fixed, moving = _slice(item["fixed"][0]), _slice(item["moving"][0])
    fixed_labels = item["fixed_labels"][0] if "fixed_labels" in item else None
    fig = Figure(figsize=(9, 3 * (1 + len(results))), layout="tight")
    axes = fig.subplots(1 + len(results), 3, squeeze=False)
    shape = item["fixed"].shape[1:]
    where = "" if len(shape) == 2 else f", slice {shape[-1] // 2} of axis 2"
    panels.show(axes[0, 0], fixed, f"fixed ({item['pair_id']}{where}, {view.plane})")
    panels.contours(axes[0, 0], fixed_labels, C, cmap="autumn")
    panels.edges(axes[0, 0])
    panels.show(axes[0, 1], moving, "moving")
    panels.contours(axes[0, 1], item["moving_labels"][0] if "moving_labels" in item else None, C, cmap="autumn")
    panels.show(axes[0, 2], np.abs(fixed - moving), "|fixed - moving|", cmap="magma")
    for row, (method, result) in zip(axes[1:], results.items()):
        dice = result.row.get("dice_mean", float("nan"))
        panels.show(row[0], result.warped, f"{method}: warped" + ("" if math.isnan(dice) else f", Dice {dice:.3f}"))
        panels.contours(row[0], fixed_labels, C, colors="w", linestyles="dashed")
        panels.contours(row[0], result.warped_labels, C, cmap="autumn")
        panels.grid(row[1], result.displacement)
        jacdet = panels.plane(result.jacdet)
        shown = panels.show(row[2], result.jacdet, f"det J (folds: {result.row['folding_percent']:.2f}%)",
                            cmap="RdBu_r", vmin=0.0, vmax=2.0)
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
