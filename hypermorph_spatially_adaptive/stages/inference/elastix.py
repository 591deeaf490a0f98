"""Method ``elastix``: the classical baseline, a multi-resolution B-spline registration by elastix (``itk-elastix``,
the optional extra ``pip install .[baselines]``).

The settings are those a medical physicist would start from for intra-patient CT (:func:`parameter_map`): three
resolutions of a smoothing pyramid, a cubic B-spline whose control points are 4 voxels apart at the finest level
(16 and 8 at the coarser ones), advanced normalized correlation plus a bending-energy penalty
(``MultiMetricMultiResolutionRegistration``), adaptive stochastic gradient descent with automatic step sizes, 500
iterations per resolution and 2048 random samples per iteration with a fixed seed. The map is written next to the
results (``OUT/elastix/parameter_map.txt``).

Geometry: the pair arrives on the fixed grid (the dataset resamples the moving image onto it), so both images are
given to elastix on that grid with its spacing, origin 0 and identity direction: ITK's index ``(x, y, z)`` is the
array's ``(i, j, k)`` (the arrays are transposed for ``itk.image_from_array``, which reads ``[z, y, x]``) and the
physical axes are the array axes. Normalized correlation and bending energy do not change under a rotation or
reflection of the physical frame, so the registration is the one on the true LPS geometry. Elastix's transform maps
a fixed point ``p`` to ``p + u(p)`` in the moving image, the project's direction; its deformation field
(``itk.transformix_deformation_field``, physical mm on the fixed grid) becomes voxels along each array axis by
:func:`field_to_voxels` (``u_voxels = diag(1 / spacing) D^-1 u_mm``).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np
import torch

__all__ = ["ELASTIX", "INSTALL_HINT", "ElastixSettings", "import_elastix", "parameter_map", "register_elastix",
           "field_to_voxels", "write_parameter_map"]

ELASTIX = "elastix"
INSTALL_HINT = "pip install .[baselines]"


class ElastixSettings:
    """The settings of :func:`parameter_map` that a run may change: ``bending_weight`` (weight of the bending-energy
    penalty against the correlation, whose weight is 1), ``iterations`` per resolution, ``resolutions``,
    ``grid_spacing_voxels`` (B-spline control-point spacing at the finest level), ``samples`` per iteration and
    the sampler's ``seed``."""

    def __init__(self, bending_weight: float = 0.05, iterations: int = 500, resolutions: int = 3,
                 grid_spacing_voxels: int = 4, samples: int = 2048, seed: int = 0):
        if not bending_weight >= 0:
            raise ValueError(f"--elastix-bending-weight must be >= 0, got {bending_weight}")
        for flag, value in (("--elastix-iterations", iterations), ("--elastix-resolutions", resolutions),
                            ("grid_spacing_voxels", grid_spacing_voxels), ("samples", samples)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        self.bending_weight, self.iterations, self.resolutions = float(bending_weight), int(iterations), int(resolutions)
        self.grid_spacing_voxels, self.samples, self.seed = int(grid_spacing_voxels), int(samples), int(seed)

    def as_dict(self) -> dict:
        return dict(vars(self))


def import_elastix() -> ModuleType:
    """The ``itk`` module with elastix; ValueError naming the extra to install when it is missing."""
    try:
        import itk
        itk.elastix_registration_method  # noqa: B018 (a lazy attribute: the elastix wrapping must load)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--methods elastix needs the optional extra itk-elastix: {INSTALL_HINT} ({error})") from None
    return itk


def parameter_map(itk: ModuleType, ndim: int, settings: ElastixSettings):
    """The elastix ``ParameterObject`` of the baseline (see the module docstring)."""
    levels = settings.resolutions
    factors = [2 ** (levels - 1 - r) for r in range(levels)]  # e.g. 4 2 1: pyramid and grid schedule
    values = {
        "Registration": ["MultiMetricMultiResolutionRegistration"],
        "Metric": ["AdvancedNormalizedCorrelation", "TransformBendingEnergyPenalty"],
        "Metric0Weight": ["1.0"], "Metric1Weight": [repr(settings.bending_weight)],
        "Transform": ["BSplineTransform"], "BSplineTransformSplineOrder": ["3"],
        "FinalGridSpacingInVoxels": [str(settings.grid_spacing_voxels)] * ndim,
        "GridSpacingSchedule": [str(f) for f in factors for _ in range(ndim)],
        "HowToCombineTransforms": ["Compose"],
        "NumberOfResolutions": [str(levels)],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"], "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "ImagePyramidSchedule": [str(f) for f in factors for _ in range(ndim)],
        "Optimizer": ["AdaptiveStochasticGradientDescent"], "AutomaticParameterEstimation": ["true"],
        "MaximumNumberOfIterations": [str(settings.iterations)],
        "ImageSampler": ["RandomCoordinate"], "NumberOfSpatialSamples": [str(settings.samples)],
        "NewSamplesEveryIteration": ["true"], "RandomSeed": [str(settings.seed)],
        "Interpolator": ["LinearInterpolator"], "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "FinalBSplineInterpolationOrder": ["3"], "Resampler": ["DefaultResampler"],
        "AutomaticTransformInitialization": ["false"], "UseDirectionCosines": ["true"],
        "WriteResultImage": ["false"], "DefaultPixelValue": ["0"],
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
    }
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(values)
    return parameters


def write_parameter_map(itk: ModuleType, path: str | Path, ndim: int, settings: ElastixSettings) -> Path:
    """Write the baseline's parameter map to ``path`` in elastix's text format (read it with ``elastix -p``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    parameters = parameter_map(itk, ndim, settings)
    parameters.WriteParameterFile(str(temporary))
    temporary.replace(path)
    return path


def _itk_image(itk: ModuleType, array: np.ndarray, spacing: Sequence[float]):
    """An ITK float image of ``array`` ``[*S]`` (array order i, j, k = ITK's x, y, z), origin 0, identity
    direction."""
    image = itk.image_from_array(np.ascontiguousarray(array.T, dtype=np.float32))
    image.SetSpacing([float(s) for s in spacing])
    return image


def field_to_voxels(field_mm: np.ndarray, spacing: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """An ITK displacement field as ``itk.array_from_image`` returns it, ``[*reversed(S), ndim]`` in physical mm,
    -> the project's field ``[ndim, *S]`` in voxels along each array axis: the array axes back in order, then
    ``u_voxels = diag(1 / spacing) D^-1 u_mm`` with the image's direction matrix ``D``."""
    ndim = field_mm.shape[-1]
    field = np.transpose(field_mm, (ndim, *reversed(range(ndim)))).astype(np.float64)  # [ndim, *S], mm
    to_index = np.diag(1.0 / np.asarray(spacing, dtype=np.float64)) @ np.linalg.inv(np.asarray(direction, float))
    return np.einsum("kj,j...->k...", to_index, field)


def register_elastix(fixed: torch.Tensor, moving: torch.Tensor, spacing: Sequence[float],
                     settings: ElastixSettings, threads: int | None = None) -> tuple[torch.Tensor, float]:
    """Register ``moving`` onto ``fixed`` (``[*S]`` or ``[1, *S]`` on one grid, ``spacing`` mm) with the baseline's
    B-spline; returns the displacement ``[1, ndim, *S]`` (float32, voxels, fixed grid, pointing into the moving
    image) and the seconds elastix and transformix took. ``threads``: elastix's threads (None: ITK's default)."""
    itk = import_elastix()
    fixed_np = fixed.detach().cpu().numpy().reshape(fixed.shape[-len(spacing):])
    moving_np = moving.detach().cpu().numpy().reshape(fixed_np.shape)
    ndim = fixed_np.ndim
    if threads:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    fixed_image, moving_image = _itk_image(itk, fixed_np, spacing), _itk_image(itk, moving_np, spacing)
    started = time.perf_counter()
    _, transform = itk.elastix_registration_method(fixed_image, moving_image,
                                                   parameter_object=parameter_map(itk, ndim, settings),
                                                   log_to_console=False)
    with tempfile.TemporaryDirectory() as folder:  # transformix writes deformationField.mhd there
        field_image = itk.transformix_deformation_field(fixed_image, transform, output_directory=folder)
    seconds = time.perf_counter() - started
    direction = np.asarray(itk.array_from_matrix(field_image.GetDirection()))
    field = field_to_voxels(np.asarray(itk.array_from_image(field_image)), spacing, direction)
    return torch.from_numpy(field).float().unsqueeze(0), seconds
