"""Loading trained models with what later stages need to know about them (model type, classes, regularizer)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


from .networks import HyperVxmDense, read_checkpoint

__all__ = ["ModelInfo", "load_trained_model"]


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a trained model: ``model_type`` (global|spatial), ``regularizer``, ``class_names`` (the spatial
    model's classes; the dataset's classes for a global model trained by this project, else empty)."""

    path: Path
    model_type: str
    regularizer: str
    class_names: tuple[str, ...]
    ncc_window: int = 9
    run_config: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _describe(path: Path, state: dict[str, Any], model: HyperVxmDense) -> ModelInfo:
    config = state.get("config") or {}
    if "model_type" in config:
        return ModelInfo(path, config["model_type"], config.get("regularizer", "elastic"),
                         tuple(config.get("class_names", ())), int(config.get("ncc_window", 9)), config)
    # A bare model.save file: P = 2 is the global elastic model, P = 2C an elastic model over C classes.
    parameters = model.nb_hyp_params
    if parameters == 2:
        return ModelInfo(path, "global", "elastic", ())
    return ModelInfo(path, "spatial", "elastic", tuple(f"class_{c}" for c in range(parameters // 2)))


def load_trained_model(path: str | Path, expect: str | None = None, map_location: Any = "cpu",
                       argument: str = "--model") -> tuple[HyperVxmDense, ModelInfo]:
    """Load a checkpoint (training or ``model.save``) and describe it; ``expect`` checks the model type.

    Raises ValueError naming ``argument`` when the file is missing or holds the wrong kind of model.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{argument} {path}: checkpoint not found")
    try:
        state = read_checkpoint(path, map_location=map_location)
        model = HyperVxmDense.from_checkpoint(state, source=str(path), map_location=map_location)
    except ValueError as error:
        raise ValueError(f"{argument} {error}") from None
    info = _describe(path, state, model)
    if expect is not None and info.model_type != expect:
        raise ValueError(f"{argument} {path}: expected a {expect} model checkpoint, got a {info.model_type} one "
                         f"({model.nb_hyp_params} parameters, trained by train_hypermorph_{info.model_type}.py)")
    model.eval()
    return model, info
