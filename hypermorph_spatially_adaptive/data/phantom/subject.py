"""One phantom subject: anatomy, per-subject materials, a breathing load, the true displacement and the image pair.

Ground truth. The fixed image is the expiration state; the load is a caudal diaphragm push on the liver (and a
weaker one under the left lung) plus an outward push of the chest wall beside the lungs, so the lungs expand; it is
scaled so the largest displacement is ``U(0.6, 1) * max_displacement`` voxels. A fixed point x maps to x + u(x) in
the moving image, so ``moving = warp(fixed, w)`` with w the inverse displacement (fixed-point iteration
``w(y) = -u(y + w(y))``), and ``moving(x + u(x)) = fixed(x)``. Per subject each tissue's Young's modulus is scaled
by a factor ~ logU(0.5, 2), air excepted.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ...core.tensors import check_spacing
from ...core.transform import sample_at_points, warp
from .anatomy import CLASS_NAMES, TEXTURES, TISSUES, anatomy, place_keypoints, render
from .elasticity import inverse_consistency, invert_displacement, lame_from_young, solve_elasticity

__all__ = ["check_grid", "default_max_displacement", "generate_subject"]


def _min_jacobian_det(displacement: np.ndarray) -> float:
    """Smallest det(I + grad u) over the grid (central differences in voxels; > 0 means no folding)."""
    ndim = displacement.shape[0]
    gradients = [np.gradient(displacement[k]) for k in range(ndim)]
    jacobian = np.stack([np.stack([gradients[k][a] + (k == a) for a in range(ndim)], -1) for k in range(ndim)], -2)
    return float(np.linalg.det(jacobian).min())


def _resolve_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def check_grid(ndim: int, shape: Sequence[int] | None, spacing: Sequence[float] | None
                ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    shape = ((96, 96) if ndim == 2 else (48, 48, 48)) if shape is None else tuple(shape)
    if len(shape) == 1:
        shape = shape * ndim
    if len(shape) != ndim or not all(isinstance(m, (int, np.integer)) and m >= 16 for m in shape):
        raise ValueError(f"shape must be {ndim} integers >= 16 (voxels per axis), got {shape!r}")
    spacing = (2.0,) * ndim if spacing is None else tuple(float(s) for s in spacing)
    spacing = check_spacing(spacing * ndim if len(spacing) == 1 else spacing, ndim)
    return tuple(int(m) for m in shape), spacing


def default_max_displacement(shape: Sequence[int]) -> float:
    """Default bound on the true displacement (voxels): 6% of the smallest image size."""
    return 0.06 * min(shape)


def generate_subject(ndim: int = 2, shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                     seed: int | np.random.Generator | None = 0, max_displacement: float | None = None,
                     noise_std: float = 20.0, keypoints: int | None = None, stiffness_range: tuple = (0.5, 2.0),
                     solver: str = "auto", texture: str = "rich") -> dict[str, Any]:
    """One random subject: anatomy, tissue materials, breathing load, true displacement and the image pair.

    ``shape`` defaults to 96x96 (2D) or 48^3 (3D), ``spacing`` to 2 mm. ``max_displacement`` (voxels; default
    :func:`default_max_displacement`, 3.84 at 64 px) bounds the largest displacement, drawn per subject as
    ``U(0.6, 1) * max_displacement``. ``noise_std`` (HU) is added independently to fixed and moving after
    warping. ``keypoints`` (default 60 in 2D, 200 in 3D) point pairs, fewer only if lungs and liver are too
    small on a very coarse grid. Stiffness factors per tissue are log-uniform in ``stiffness_range``.
    ``seed``: an int or a ``numpy.random.Generator``; equal seeds give identical subjects. ``texture``: the image
    regime of :func:`.anatomy.render` (``rich`` or ``ct``); the two regimes of a seed differ only in the images.

    Returns a dict of numpy arrays and metadata:
    ``fixed``, ``moving``, ``fixed_clean``, ``moving_clean`` (noise-free): float32 ``[*S]``, HU;
    ``fixed_labels``, ``moving_labels``, ``fixed_mask``, ``moving_mask``: uint8 ``[*S]``;
    ``fixed_keypoints``, ``moving_keypoints``: float64 ``[N, ndim]`` voxels, row i of one matches row i of the
    other (``moving = fixed + u(fixed)``); ``displacement`` u and ``inverse_displacement`` w: float64
    ``[ndim, *S]`` voxels, u on the fixed grid (``moving(x + u(x)) = fixed(x)``), w on the moving grid;
    ``spacing``; ``materials`` (per class ``E, nu, lam, mu``, kPa, after the factors); ``stiffness_factors``;
    ``load`` (force densities in kPa/mm, the drawn displacement bound); ``min_jacobian_det`` of u;
    ``inverse_error`` (max over the grid of ``|u(x) + w(x + u(x))|``, voxels, largest where the soft air meets
    the clamped border) and ``inverse_error_lung_liver`` (the same max over lungs and liver).
    """
    shape, spacing = check_grid(ndim, shape, spacing)
    max_displacement = default_max_displacement(shape) if max_displacement is None else max_displacement
    if not max_displacement > 0:
        raise ValueError(f"max_displacement must be > 0 voxels, got {max_displacement!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0 HU, got {noise_std!r}")
    keypoints = (60 if ndim == 2 else 200) if keypoints is None else keypoints
    if not isinstance(keypoints, (int, np.integer)) or keypoints < 1:
        raise ValueError(f"keypoints must be a positive integer, got {keypoints!r}")
    low, high = (float(v) for v in stiffness_range)
    if not 0 < low <= high:
        raise ValueError(f"stiffness_range must be (low, high) with 0 < low <= high, got {stiffness_range!r}")
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    rng = _resolve_rng(seed)

    labels, regions = anatomy(shape, rng, spacing)
    fixed_clean, vessels = render(labels, regions, rng, texture)

    factors = {"background": 1.0}
    for name in CLASS_NAMES[1:]:
        factors[name] = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    materials = {}
    for name in CLASS_NAMES:
        E = TISSUES[name]["E"] * factors[name]
        lam, mu = lame_from_young(E, TISSUES[name]["nu"])
        materials[name] = {"E": E, "nu": TISSUES[name]["nu"], "lam": lam, "mu": mu}
    lam_map = np.array([materials[n]["lam"] for n in CLASS_NAMES])[labels]
    mu_map = np.array([materials[n]["mu"] for n in CLASS_NAMES])[labels]

    # Breathing load (inspiration): the diaphragm pushes the abdomen caudally (-last axis), the chest wall
    # moves outwards. Relative magnitudes per subject; the overall scale is set by max_displacement below.
    left_ratio, lateral_ratio = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.7)
    force = np.zeros((ndim,) + shape)
    force[-1] -= (labels == 4) + left_ratio * regions["left_abdomen"]
    for k in range(len(regions["outward"])):
        force[k] += lateral_ratio * regions["wall"] * regions["outward"][k]
    raw = solve_elasticity(lam_map, mu_map, force, spacing, solver=solver)
    target = rng.uniform(0.6, 1.0) * max_displacement
    scale = target / np.sqrt((raw ** 2).sum(0)).max()
    displacement = raw * scale

    inverse = invert_displacement(displacement)
    consistency = inverse_consistency(displacement, inverse)
    w = torch.from_numpy(inverse).unsqueeze(0)
    moving_clean = warp(torch.from_numpy(fixed_clean)[None, None], w)[0, 0].numpy()
    moving_labels = warp(torch.from_numpy(labels.astype(np.int64))[None, None], w, mode="nearest")[0, 0].numpy()
    moving_labels = moving_labels.astype(np.uint8)

    fixed_points = place_keypoints(labels, vessels, int(keypoints), rng)
    moving_points = fixed_points + sample_at_points(torch.from_numpy(displacement),
                                                    torch.from_numpy(fixed_points)).numpy()
    fixed = fixed_clean + noise_std * rng.standard_normal(shape)
    moving = moving_clean + noise_std * rng.standard_normal(shape)
    load = {
        "diaphragm_kpa_per_mm": float(scale),  # caudal body force in the liver
        "left_diaphragm_kpa_per_mm": float(scale * left_ratio),  # caudal, soft tissue under the left lung
        "chest_wall_kpa_per_mm": float(scale * lateral_ratio),  # outward, chest wall beside the lungs
        "max_displacement_vox": float(target),
    }
    return {
        "fixed": fixed.astype(np.float32), "moving": moving.astype(np.float32),
        "fixed_clean": fixed_clean.astype(np.float32), "moving_clean": moving_clean.astype(np.float32),
        "fixed_labels": labels, "moving_labels": moving_labels,
        "fixed_mask": (labels > 0).astype(np.uint8), "moving_mask": (moving_labels > 0).astype(np.uint8),
        "fixed_keypoints": fixed_points, "moving_keypoints": moving_points,
        "displacement": displacement, "inverse_displacement": inverse,
        "inverse_error": float(consistency.max()),
        "inverse_error_lung_liver": float(consistency[(labels == 2) | (labels == 4)].max(initial=0.0)),
        "min_jacobian_det": _min_jacobian_det(displacement),
        "spacing": spacing, "materials": materials, "stiffness_factors": factors, "load": load,
    }
