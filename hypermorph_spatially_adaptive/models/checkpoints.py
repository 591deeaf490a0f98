"""The checkpoint format: what every model file of the project holds, how it is written and read, and what kind of
model it holds.

Two kinds of file, both dicts written atomically with ``torch.save`` (temporary file + rename):

- a model file (:func:`model_file`, written by ``model.save``): ``format``, ``model_config`` (the constructor
  keywords, enough to rebuild the model) and ``model_state``;
- a training checkpoint (:func:`training_checkpoint`, ``checkpoints/last.pt`` and ``best.pt`` of a run): the same
  keys plus ``config`` (the run's resolved options, data and classes), ``optimizer_state``, ``step``, ``epoch``,
  ``best_score`` and ``rng`` (Python, NumPy and torch RNG states).

The model kind (:class:`ModelKind`: global or spatial, elastic or diffusion, class names) is part of
``model_config`` (keys ``regularizer`` and ``class_names`` next to ``nb_hyp_params``), so a file says how to read
its parameter vector; a HyperMorph file without them is refused. ``format`` ``hypermorph-v2`` (kernel heads
``[E, out]``) is the only format.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..core.hyperparams import params_per_class
from ..files import atomic_torch_save

__all__ = ["FORMAT", "MODEL_TYPES", "RUN_CHECKPOINT", "CONFIG_BOUNDS", "ModelKind", "kind_from_config", "model_kind",
           "model_file", "training_checkpoint", "save_checkpoint", "read_checkpoint",
           "resolve_checkpoint"]

#: Value of the ``format`` key of every file written by this version.
FORMAT = "hypermorph-v2"
MODEL_TYPES = ("global", "spatial")
#: Where a training run folder keeps the checkpoint that model flags read by default.
RUN_CHECKPOINT = Path("checkpoints") / "last.pt"


@dataclass(frozen=True)
class ModelKind:
    """How a HyperMorph model reads its parameter vector ``[B, P]``.

    ``model_type``: ``global`` (one set of parameters for the whole image) or ``spatial`` (one set per class of the
    fixed labels, class 0 = background); ``regularizer``: ``elastic`` (``lam, mu`` per set: all lambdas, then all
    mus) or ``diffusion`` (one weight ``h`` per set); ``class_names``: the classes of a spatial model's vector, and
    for a global model the classes of the data it was trained on when known (else empty).
    """

    model_type: str
    regularizer: str
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def nb_hyp_params(self) -> int:
        """Length P of the parameter vector."""
        sets = len(self.class_names) if self.model_type == "spatial" else 1
        return params_per_class(self.regularizer) * sets


def kind_from_config(config: Mapping[str, Any]) -> ModelKind:
    """The kind of a HyperMorph ``model_config`` holding ``nb_hyp_params``, ``regularizer`` and ``class_names``.

    P = ``params_per_class(regularizer)`` is a global model; a multiple of it, ``C`` classes, is a spatial one. A
    spatial model's ``class_names`` must name its C classes (None: ``class_0``...); a global model's name the
    training data's classes or are None. Raises ValueError for anything else (the constructor's check).
    """
    parameters, regularizer, names = config["nb_hyp_params"], config.get("regularizer"), config.get("class_names")
    per_class = params_per_class(regularizer)  # validates the regularizer
    if isinstance(parameters, bool) or not isinstance(parameters, int) or parameters < 1 \
            or parameters % per_class:
        raise ValueError(f"nb_hyp_params must be a positive multiple of {per_class} for the {regularizer} "
                         f"regularizer ({per_class} value(s) per class), got {parameters!r}")
    sets = parameters // per_class
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names) \
                or len(set(names)) != len(names) or not names:
            raise ValueError(f"class_names must be distinct non-empty strings, got {names!r}")
        if sets > 1 and len(names) != sets:
            raise ValueError(f"class_names must name the {sets} classes of the {regularizer} model's "
                             f"{parameters} parameters, got {len(names)}: {list(names)}")
    if sets == 1:
        return ModelKind("global", regularizer, tuple(names or ()))
    return ModelKind("spatial", regularizer, tuple(names) if names else tuple(f"class_{c}" for c in range(sets)))


def model_kind(payload: Mapping[str, Any], source: str = "checkpoint") -> ModelKind:
    """The kind of the HyperMorph model in a file read by :func:`read_checkpoint` (see the module docstring)."""
    return kind_from_config(payload["model_config"])


def model_file(model: torch.nn.Module) -> dict[str, Any]:
    """What ``model.save`` writes: ``format``, ``model_config`` (with the kind) and ``model_state``."""
    return {"format": FORMAT, "model_config": model.config, "model_state": model.state_dict()}


def training_checkpoint(model: torch.nn.Module, run_config: dict[str, Any], optimizer_state: dict[str, Any],
                        step: int, epoch: int, best_score: float, rng: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint: :func:`model_file` plus the run's ``config`` and everything a resume needs."""
    return {**model_file(model), "config": run_config, "optimizer_state": optimizer_state, "step": step,
            "epoch": epoch, "best_score": best_score, "rng": rng}


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` with ``torch.save`` atomically (a reader never sees a partial file)."""
    return atomic_torch_save(payload, path)


def _safe_globals() -> list:
    """Plain-data types a training checkpoint may hold beyond tensors (numpy RNG state, paths in the options),
    allowed for ``torch.load(weights_only=True)``."""
    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32)),
            pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath, pathlib.WindowsPath]


#: Bounds of the whole-number entries of a ``model_config`` (of each element of a list): a file outside them is
#: refused before a model is built.
CONFIG_BOUNDS = {"inshape": (1, 1 << 14), "nb_hyp_params": (1, 1 << 12), "enc_features": (1, 1 << 12),
                 "dec_features": (1, 1 << 12), "int_steps": (0, 64), "hyper_layers": (0, 64),
                 "hyper_units": (1, 1 << 14)}
# The entries that are lists, and their allowed lengths (``inshape``: 2D or 3D).
_LIST_LENGTHS = {"inshape": range(2, 4), "enc_features": range(1, 17), "dec_features": range(1, 33)}


def _check_model_config(config: Any, path: str) -> None:
    if not isinstance(config, dict):
        raise ValueError(f"{path}: 'model_config' must be a dict, got {type(config).__name__}")
    for key, (low, high) in CONFIG_BOUNDS.items():
        if key not in config:
            continue
        value, lengths = config[key], _LIST_LENGTHS.get(key)
        is_list = isinstance(value, (list, tuple))
        values = value if lengths is not None and is_list else [value]
        whole = all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values)
        if not whole or (lengths is not None and not (is_list and len(value) in lengths)):
            what = f"a list of {lengths.start} to {lengths.stop - 1} whole numbers" if lengths else "a whole number"
            raise ValueError(f"{path}: model_config {key!r} must be {what} in {low}..{high}, got {value!r}")
    missing = [key for key in ("regularizer", "class_names") if key not in config]
    if "nb_hyp_params" in config and missing:
        raise ValueError(f"{path}: model_config does not record its model kind (no {missing}); rebuild the model "
                         f"with HyperVxmDense(**model_config, regularizer=..., class_names=[...]) and save it again")


def _check_finite_weights(state: Any, path: str) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'model_state' must be a state dict, got {type(state).__name__}")
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{path}: weight {name!r} holds {count} NaN or infinite value(s); the file is damaged "
                             f"or comes from a diverged run")


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a model file or training checkpoint with ``weights_only=True`` (numpy RNG states and paths allowed;
    anything needing arbitrary unpickling is refused) and check its format and model keys.

    Every ``model_config`` value must lie in its bounds (:data:`CONFIG_BOUNDS`), a HyperMorph config must record its
    kind and every weight be finite. Raises FileNotFoundError for a missing file, ValueError for an unreadable,
    incomplete, out-of-bounds, non-finite or unknown one.
    """
    path = os.fspath(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # the unpickler raises several types for foreign or corrupt files
        raise ValueError(f"{path}: not a readable model file or checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a dict with 'model_config' and 'model_state', "
                         f"got {type(payload).__name__}")
    for key in ("model_config", "model_state"):
        if key not in payload:
            raise ValueError(f"{path}: missing key {key!r} (found keys {sorted(map(str, payload))})")
    version = payload.get("format")
    if version != FORMAT:
        raise ValueError(f"{path}: checkpoint format {version!r}, this version reads only {FORMAT!r}")
    _check_model_config(payload["model_config"], path)
    _check_finite_weights(payload["model_state"], path)
    return payload


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or the :data:`RUN_CHECKPOINT` (``checkpoints/last.pt``) of a training run
    folder."""
    path = Path(path)
    return path / RUN_CHECKPOINT if path.is_dir() else path
