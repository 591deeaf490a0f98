"""The stages as Python functions: typed options in, a result with the output files and main tables out.

    from hypermorph_spatially_adaptive.stages import api

    trained = api.train(api.GlobalTrainOptions(data_root="data/phantom2d", out="runs/p2d/global", steps=2000))
    chosen = api.identify(api.IdentifyOptions(data_root="data/phantom2d", global_model=trained.out,
                                              out="runs/p2d/identification"))
    print(chosen.parameters.values("population"))

Each ``*Options`` class is a dataclass with one field per flag of the stage's script: the flag's dest as the name
and its default (``--data-root`` is ``data_root``, ``--no-hd95`` is ``hd95=False``). The classes are generated
from the scripts' parsers, so a new flag is a new field and the two cannot drift; ``help(api.InferOptions)`` lists
the fields with the flags' help. ``config`` (a file of flag defaults) and ``dry_run`` (a printed plan) belong to
the command line and are not fields. The demo and the study have the same in their own packages
(``demo.DemoOptions``, ``demo.demo``; ``study.StudyOptions``, ``study.study``).

A stage function converts and checks every field as the command line checks its flag (type, choices, number of
values), holds the lock of ``out`` while it runs (:mod:`.run_folder`), and raises ``ValueError`` (bad options or
data), ``OSError`` (a file that cannot be read or written) or the stage's own error instead of exiting. The demo
and the study call these functions.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..evaluation.locality import Locality
from .identification import build_parser as identification_parser, run as identification_run
from .inference import build_parser as inference_parser, run as inference_run
from .inference.pairs import output_stem
from .locality import build_parser as locality_parser, measure as locality_measure
from .options import call_stage, options_class, read_rows
from .parameter_table import ParameterTable, read_parameters
from .training import build_parser as training_parser, train as training_run

__all__ = ["GlobalTrainOptions", "SpatialTrainOptions", "IdentifyOptions", "InferOptions", "LocalityOptions",
           "TrainResult", "IdentifyResult", "InferResult", "LocalityResult", "train", "identify", "infer",
           "measure_locality"]

#: The columns of ``metrics.csv`` that are not numbers.
METRICS_TEXT = ("pair_id", "method", "parameters_source")

GlobalTrainOptions = options_class("GlobalTrainOptions", lambda: training_parser("global"),
                                   "training the global model (train_hypermorph_global.py)", __name__)
SpatialTrainOptions = options_class("SpatialTrainOptions", lambda: training_parser("spatial"),
                                    "training the spatial model (train_hypermorph_spatial.py)", __name__)
IdentifyOptions = options_class("IdentifyOptions", identification_parser,
                                "parameter identification (parameter_identification.py)", __name__)
InferOptions = options_class("InferOptions", inference_parser, "inference (inference.py)", __name__)
LocalityOptions = options_class("LocalityOptions", locality_parser, "the locality measurement (locality.py)",
                                __name__)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A training run: its folder, ``checkpoints/last.pt`` (what a model option reads), ``checkpoints/best.pt`` and
    ``train_log.csv``."""

    out: Path
    checkpoint: Path
    best_checkpoint: Path
    log: Path


@dataclasses.dataclass(frozen=True)
class IdentifyResult:
    """An identification run: its folder, ``parameters.csv`` (read: per scope and class ``lam``, ``mu``) and
    ``grid_scores.csv``."""

    out: Path
    parameters_file: Path
    grid_scores_file: Path
    parameters: ParameterTable


@dataclasses.dataclass(frozen=True)
class InferResult:
    """An inference run: its folder, ``metrics.csv`` (read: one dict per pair and method, numbers as floats, empty
    cells None; columns in docs/ARCHITECTURE.md) and ``summary.csv``; :meth:`displacement_file` finds a pair's field
    (Learn2Reg NIfTI ``[*S, ndim]`` voxels on the fixed grid, or an ITK displacement field)."""

    out: Path
    metrics_file: Path
    summary_file: Path
    metrics: list[dict[str, Any]]

    def displacement_file(self, pair_id: str, method: str) -> Path:
        """The displacement written for ``pair_id`` by ``method`` (any output format); FileNotFoundError if none."""
        stem = output_stem(str(pair_id))
        found = sorted((self.out / method).glob(f"disp_{stem}.*"))
        if not found:
            raise FileNotFoundError(f"{self.out / method}: no displacement of pair {pair_id!r} (disp_{stem}.*; "
                                    f"written unless no_save_outputs)")
        return found[0]


@dataclasses.dataclass(frozen=True)
class LocalityResult:
    """A locality run: its folder, ``locality.csv`` and the measurement (locality and leakage per foreground class)."""

    out: Path
    file: Path
    locality: Locality


def train(options: GlobalTrainOptions | SpatialTrainOptions) -> TrainResult:
    """Train (or resume) the global or the spatial model, by the class of ``options``."""
    if not isinstance(options, (GlobalTrainOptions, SpatialTrainOptions)):
        raise TypeError(f"train takes GlobalTrainOptions or SpatialTrainOptions, got {type(options).__name__}")
    _, out = call_stage(options, training_run, "training")
    out = Path(out)
    return TrainResult(out, out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt", out / "train_log.csv")


def identify(options: IdentifyOptions) -> IdentifyResult:
    """Score the global model over the grid and choose parameters per scope (``parameter_identification.py``)."""
    _, out = call_stage(options, identification_run, "identification")
    out = Path(out)
    return IdentifyResult(out, out / "parameters.csv", out / "grid_scores.csv", read_parameters(out / "parameters.csv"))


def infer(options: InferOptions) -> InferResult:
    """Register pairs with every method of ``options.methods`` and score them (``inference.py``)."""
    _, out = call_stage(options, inference_run, "inference")
    out = Path(out)
    return InferResult(out, out / "metrics.csv", out / "summary.csv", read_rows(out / "metrics.csv", METRICS_TEXT))


def measure_locality(options: LocalityOptions) -> LocalityResult:
    """Measure whether each class's parameters act where the class is (``locality.py``)."""
    args, (result, path) = call_stage(options, locality_measure, "locality")
    return LocalityResult(Path(args.out), Path(path), result)
