"""Training curves: ``train_curves.png`` drawn from ``train_log.csv`` at each checkpoint, and TensorBoard events.

:func:`write_curves` plots the loss terms and the validation metrics against the step (matplotlib ``Figure``, Agg,
no pyplot state) and replaces the PNG atomically, so a viewer never sees a partial file. With ``--tensorboard``
every log row also goes to TensorBoard event files (``OUT/tensorboard/``, one scalar per column) through
``torch.utils.tensorboard``, which needs the ``tensorboard`` package (the ``tensorboard`` extra):
:func:`require_tensorboard` checks for it before anything is written.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ...files import atomic_write

__all__ = ["CURVES_FILE", "TENSORBOARD_FOLDER", "write_curves", "require_tensorboard", "open_tensorboard",
           "log_scalars"]

CURVES_FILE = "train_curves.png"
TENSORBOARD_FOLDER = "tensorboard"
_NOT_PLOTTED = ("step", "epoch", "time_s")
_INSTALL = "pip install 'elastic-hypermorph[tensorboard]' (or pip install tensorboard)"


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _series(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Column -> (steps, values) of the rows of ``train_log.csv`` where the column has a value."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = _number(row.get("step"))
        for key, text in row.items():
            value = _number(text)
            if key in _NOT_PLOTTED or math.isnan(step) or math.isnan(value):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(value)
    return series


_PANELS = (
    ("loss terms", ("loss", "similarity"), "linear"),
    ("regularization", ("regularization",), "log"),
    ("validation overlap", ("val_dice",), "linear"),
    ("validation distances (mm) and folding (%)", ("val_tre_mm", "val_folding_percent"), "linear"),
    ("validation locality", ("val_locality_",), "linear"),
)


def write_curves(log_path: str | Path, path: str | Path) -> Path | None:
    """Draw the columns of ``log_path`` (``train_log.csv``) against the step into ``path`` (PNG), atomically.

    One panel each for the loss terms, the regularization (log scale), validation Dice, validation TRE and folding,
    and (spatial models) the validation locality per class; panels without values are left out. Returns ``path``,
    or None when the log has no values yet.
    """
    series = _series(Path(log_path))
    panels = []
    for title, prefixes, scale in _PANELS:
        keys = [key for key in series if any(key == p or (p.endswith("_") and key.startswith(p)) for p in prefixes)]
        if keys:
            panels.append((title, keys, scale))
    if not panels:
        return None
    figure = Figure(figsize=(4.2 * len(panels), 3.2), layout="constrained")
    for axes, (title, keys, scale) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            steps, values = series[key]
            axes.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.0, label=key)
        if scale == "log" and all(v > 0 for key in keys for v in series[key][1]):
            axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_title(title, fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=90))


def require_tensorboard() -> None:
    """ValueError (an exit-2 message naming ``--tensorboard``) when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports tensorboard)
    except ImportError as error:
        raise ValueError(f"--tensorboard needs the tensorboard package, which is not installed ({error}); "
                         f"{_INSTALL}, or drop --tensorboard (train_curves.png is written without it)") from None


def open_tensorboard(folder: str | Path) -> Any:
    """A ``SummaryWriter`` writing event files into ``folder`` (see :func:`require_tensorboard`)."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


def log_scalars(writer: Any, row: dict[str, Any]) -> None:
    """Every numeric column of a log ``row`` (except ``step``, ``epoch``) as a scalar at ``row["step"]``."""
    step = int(row["step"])
    for key, value in row.items():
        if key in ("step", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not math.isnan(float(value)):
            writer.add_scalar(key, float(value), step)
    writer.flush()
