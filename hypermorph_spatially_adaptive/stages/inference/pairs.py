"""Inference on one pair: the method's parameters, the registration, its scores and its output files.

Methods (:data:`METHODS`): ``global`` (the global model at the ``global`` scope of ``parameters.csv``),
``tissue_population`` (the spatial model with the ``population`` vector, or ``population_refined``),
``tissue_subject`` (the spatial model with the pair's own rows, else the population vector), ``literature``
(the spatial model at one given (lam, mu) for every class, or a given vector) and ``tissue_oracle`` (the spatial
model at the vector chosen by the true error on other pairs, :mod:`.oracle`: an upper reference on synthetic data),
``identity`` (the zero field, with the population vector for its ``+io`` counterpart, :mod:`.instance`) and
``elastix`` (the classical B-spline baseline, :mod:`.elastix`). The networks see the two images and
the parameter vector, and a spatial model with ``maps`` or ``tissue`` conditioning also the fixed labels, which place
each class's values; otherwise labels and keypoints are used for scoring only. Output files of a pair, on the fixed grid
with its affine, in ``OUT/<method>/``: ``warped_<stem>``, ``warped_labels_<stem>`` (with labels), ``disp_<stem>``
(Learn2Reg ``[*S, ndim]``, voxels) and ``jacdet_<stem>`` ``.nii.gz`` (:func:`output_paths`), or the same volumes as
``.mha``/``.nrrd`` with the field as an ITK displacement field (:func:`write_outputs`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ...core.metrics import jacobian_determinant, warp_labels
from ...data import image_io, nifti_io
from ...evaluation.pair_metrics import pair_metrics, tissue_metrics
from ...models.networks import HyperVxmDense, RegistrationOutput
from ..parameter_table import GLOBAL, ORACLE, POPULATION, ParameterTable
from .elastix import ELASTIX
from .instance import IDENTITY

__all__ = ["METHODS", "DEFAULT_METHODS", "SPATIAL_METHODS", "NETWORK_METHODS", "LITERATURE", "TISSUE_ORACLE",
           "IDENTITY", "ELASTIX", "PairResult", "output_stem", "method_parameters", "predict", "register",
           "score_pair", "output_paths", "write_outputs"]

METHODS = ("global", "tissue_population", "tissue_subject", "literature", "tissue_oracle", IDENTITY, ELASTIX)
DEFAULT_METHODS = ("global", "tissue_population", "tissue_subject")
SPATIAL_METHODS = ("tissue_population", "tissue_subject", "literature", "tissue_oracle")
#: The methods that run a network (the others: ``identity`` and ``elastix``).
NETWORK_METHODS = ("global", *SPATIAL_METHODS)
LITERATURE, TISSUE_ORACLE = "literature", "tissue_oracle"


def output_stem(pair_id: str) -> str:
    """Learn2Reg file stem ``<fixed case>_<moving case>`` of a dataset pair: ``"0101"`` -> ``"0101_0101"``.

    Ids with both cases already (``"0001_0002"``) or of other datasets (``"patient001"``) are kept as they are.
    """
    return f"{pair_id}_{pair_id}" if re.fullmatch(r"\d+", pair_id) else pair_id


def method_parameters(method: str, pair_id: str, table: ParameterTable, population_scope: str = POPULATION,
                      literature: torch.Tensor | None = None,
                      oracle: ParameterTable | None = None) -> tuple[torch.Tensor, str]:
    """The model input ``[1, P]`` of ``method`` for ``pair_id`` and the scope it came from.

    ``global`` -> ``[[lam, mu]]`` of the global scope; ``tissue_population`` -> ``population_scope``;
    ``tissue_subject`` -> the pair's own scope, else ``population_scope``; ``literature`` -> ``literature``;
    ``tissue_oracle`` -> the ``oracle`` scope of ``oracle`` (``oracle_parameters.csv``); ``identity`` ->
    ``population_scope`` (the Lame maps of its ``+io`` counterpart).
    """
    if method == "global":
        return torch.tensor([table.global_pair()], dtype=torch.float32), GLOBAL
    if method in ("tissue_population", IDENTITY):
        return table.hyper(population_scope), population_scope
    if method == "tissue_subject":
        scope = table.subject_scope(pair_id, fallback=population_scope)
        return table.hyper(scope), scope
    if method == LITERATURE:
        if literature is None:
            raise ValueError("--methods literature needs --literature-params")
        return literature.reshape(1, -1).float(), LITERATURE
    if method == TISSUE_ORACLE:
        if oracle is None:
            raise ValueError("--methods tissue_oracle: its parameters have not been chosen")
        return oracle.hyper(ORACLE), ORACLE
    raise ValueError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict(model: HyperVxmDense, item: dict[str, Any], hyper: torch.Tensor,
            device: torch.device) -> tuple[RegistrationOutput, float]:
    """Run ``model`` on one item: its output (warped moving ``[1, 1, *S]``, displacement and velocity
    ``[1, ndim, *S]``) and the seconds spent in the forward pass and integration (CUDA synchronised before and
    after)."""
    moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)
    hyper = hyper.to(device)
    labels = None
    if getattr(model, "needs_labels", False):
        if "fixed_labels" not in item:
            raise ValueError(f"pair {item['pair_id']}: the spatial model (conditioning {model.conditioning!r}) needs "
                             f"the fixed image's labels, and this pair has none")
        labels = item["fixed_labels"][None].to(device)
    _synchronize(device)
    start = time.perf_counter()
    output = model(moving, fixed, hyper, labels)
    _synchronize(device)
    return output, time.perf_counter() - start


def register(model: HyperVxmDense, item: dict[str, Any], hyper: torch.Tensor,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`predict` without the velocity: warped moving ``[1, 1, *S]``, displacement ``[1, ndim, *S]`` and the
    seconds."""
    output, seconds = predict(model, item, hyper, device)
    return output.warped, output.displacement, seconds


@dataclass
class PairResult:
    """One pair registered by one method: arrays ``[*S]`` (field ``[ndim, *S]``) on the CPU and its metrics row."""

    warped: torch.Tensor
    warped_labels: torch.Tensor | None
    displacement: torch.Tensor
    jacdet: torch.Tensor
    row: dict[str, Any]


def score_pair(item: dict[str, Any], method: str, warped: torch.Tensor, displacement: torch.Tensor,
               runtime_s: float, source: str, class_names: Sequence[str], hd95: bool) -> PairResult:
    """Metrics row (the documented columns plus ``epe_mm``, ``parameters_source`` and the per-class columns of
    :func:`~...evaluation.pair_metrics.tissue_metrics`) and the arrays to write."""
    field = displacement[0].detach().cpu()
    warped_labels = None
    if "moving_labels" in item:
        warped_labels = warp_labels(item["moving_labels"][None], field[None])[0, 0]
    jacdet = jacobian_determinant(field, tuple(float(s) for s in item["spacing"]))
    metrics = pair_metrics(field, item, class_names, hd95=hd95, jacobian=jacdet, warped_labels=warped_labels)
    row = {"pair_id": item["pair_id"], "method": method, "hd95_mm": float("nan"), "epe_mm": float("nan"),
           **metrics, "runtime_s": runtime_s, "parameters_source": source,
           **tissue_metrics(field, item, class_names)}
    return PairResult(warped[0, 0].detach().cpu(), warped_labels, field, jacdet, row)


def output_paths(out: Path, method: str, stem: str, labels: bool, fmt: str = "nifti") -> dict[str, Path]:
    """The files of one pair and method: ``OUT/<method>/<kind>_<stem><ending>`` for the output format ``fmt``
    (``nifti``: ``.nii.gz``, ``mha``, ``nrrd``)."""
    folder = out / method
    suffix = image_io.format_suffix(fmt)
    paths = {kind: folder / f"{kind}_{stem}{suffix}" for kind in ("warped", "disp", "jacdet")}
    if labels:
        paths["warped_labels"] = folder / f"warped_labels_{stem}{suffix}"
    return paths


def write_outputs(paths: dict[str, Path], result: PairResult, affine: torch.Tensor, fmt: str = "nifti") -> None:
    """Write the volumes of one result on the fixed grid (``affine`` 4x4, voxel -> RAS) in format ``fmt``.

    ``nifti``: the Learn2Reg files (the field ``[*S, ndim]`` in voxels); ``mha``, ``nrrd``: the same volumes in that
    format, the field as an ITK displacement field (vectors in LPS mm, applicable with SimpleITK's
    ``DisplacementFieldTransform``).
    """
    labels = result.warped_labels.numpy() if "warped_labels" in paths else None
    if labels is not None:
        labels = labels.astype("uint8" if labels.max(initial=0) < 256 else "int16")
    if fmt == "nifti":
        nifti_io.write_volume(paths["warped"], result.warped.float().numpy(), affine)
        nifti_io.write_displacement(paths["disp"], result.displacement, affine)
        nifti_io.write_volume(paths["jacdet"], result.jacdet.float().numpy(), affine)
        if labels is not None:
            nifti_io.write_volume(paths["warped_labels"], labels, affine)
        return
    affine = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else affine
    image_io.write_image(paths["warped"], result.warped.float().numpy(), affine)
    image_io.write_displacement(paths["disp"], result.displacement.double().numpy(), affine)
    image_io.write_image(paths["jacdet"], result.jacdet.float().numpy(), affine)
    if labels is not None:
        image_io.write_image(paths["warped_labels"], labels, affine)
