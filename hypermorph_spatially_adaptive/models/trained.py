"""Trained models as the stages load them: a checkpoint file or a training run folder -> the model and what the
stages need to know about it (:class:`ModelInfo`: its kind, the run's NCC window and configuration)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import ModelKind, read_checkpoint, resolve_checkpoint
from .networks import HyperVxmDense

__all__ = ["ModelInfo", "load_trained_model"]


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a trained model: the file it came from, its :class:`~.checkpoints.ModelKind`, the NCC window it
    was trained with and the run's ``config`` (None for a ``model.save`` file)."""

    path: Path
    kind: ModelKind
    ncc_window: int = 9
    run_config: dict[str, Any] | None = None

    @property
    def model_type(self) -> str:
        return self.kind.model_type

    @property
    def regularizer(self) -> str:
        return self.kind.regularizer

    @property
    def class_names(self) -> tuple[str, ...]:
        """The spatial model's classes; the training data's classes for a global model (empty when unknown)."""
        return self.kind.class_names

    @property
    def num_classes(self) -> int:
        return self.kind.num_classes


def load_trained_model(path: str | os.PathLike, expect: str | None = None, map_location: Any = "cpu",
                       argument: str = "--model") -> tuple[HyperVxmDense, ModelInfo]:
    """Load a checkpoint (training or ``model.save``) or a run folder's ``checkpoints/last.pt``, in eval mode.

    ``expect`` (``global`` or ``spatial``) checks the model type. Raises ValueError naming ``argument`` when the
    file is missing, unreadable, of unknown kind or of the wrong type.
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise ValueError(f"{argument} {path}: checkpoint not found (give a checkpoint file or a training run folder)")
    try:
        payload = read_checkpoint(path, map_location=map_location)
        model = HyperVxmDense.from_checkpoint(payload, source=str(path), map_location=map_location)
    except ValueError as error:
        raise ValueError(f"{argument} {error}") from None
    run = payload.get("config")
    info = ModelInfo(path, model.kind, int((run or {}).get("ncc_window", 9)), run)
    if expect is not None and info.model_type != expect:
        raise ValueError(f"{argument} {path}: expected a {expect} model checkpoint, got a {info.model_type} one "
                         f"({model.nb_hyp_params} parameters, trained by train_hypermorph_{info.model_type}.py)")
    model.eval()
    return model, info
