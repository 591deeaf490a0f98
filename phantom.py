"""Synthetic thorax phantom with a known, heterogeneous linear-elastic ground-truth deformation.

Run ``python phantom.py --out DIR --ndim 2 --subjects 10`` to write a dataset in the Learn2Reg NLST layout with
prefix ``PHANTOM`` (see :func:`write_dataset`). Every subject has its own anatomy, tissue stiffness factors and
breathing load; its true displacement solves the Navier-Cauchy equations with tissue-specific Lame parameters,
so tissue-specific elastic regularization is the right model of this data by construction.

Orientation (RAS+, affine ``diag(spacing, 1)``): array axis 0 points to the patient's right, axis 1 anterior
(3D only) and the last axis superior (cranial). A 2D phantom is a coronal slice (axes right, superior), so the
diaphragm motion (along the last axis) is in plane. Classes: 0 background (air), 1 soft_tissue, 2 lung,
3 bone, 4 liver.

Physics. Unknown: displacement u ``[ndim, *S]`` in voxels on the fixed grid; physical displacement along axis k
is ``spacing[k] * u[k]`` (mm), derivatives along axis a are divided by ``spacing[a]``. Discrete energy

    E(u) = sum_x sum_s 2^-ndim vol [lam(x)/2 (div u)^2 + mu(x) ||eps(u)||_F^2]_(x, s) - sum_x vol b(x) . U(x)

where ``s`` runs over the 2^ndim corner orientations (forward or backward difference along each axis), i.e. the
strain of the corner simplex of node x spanned by its neighbours x + s_a e_a (linear finite elements on the 2^ndim
corner simplices of each voxel, averaged so that no direction is favoured), ``vol = prod(spacing)`` (mm^ndim),
lam and mu in kPa and ``b`` the body-force density in kPa/mm. Its stationarity equations ``K u = f`` with
``K = B^T W B`` (:func:`elasticity_operator`, :func:`load_vector`) discretise
``div(lam tr(eps) I + 2 mu eps) + b = 0`` consistently; affine fields in a homogeneous material are exact.
Dirichlet conditions hold on the image border (zero by default).

Materials (:data:`TISSUES`, Young's modulus E in kPa, Poisson ratio nu; per subject each tissue's E is scaled by
a factor ~ logU(0.5, 2), air excepted): bone 1000/0.3 >> liver 30/0.4 > soft tissue 10/0.3 > lung 2/0.3 > air
1/0.1. Air is a very soft compressible material (not a void), so the body can expand into it; the body is cut
by the top and bottom of the field of view, where the zero border holds it like the neck and pelvis would.

Ground truth. The fixed image is the expiration state; the load is a caudal diaphragm push on the liver (and a
weaker one under the left lung) plus an outward push of the chest wall beside the lungs, so the lungs expand;
it is scaled so the largest displacement is ``U(0.6, 1) * max_displacement`` voxels. A fixed point x maps to
x + u(x) in the moving image, so ``moving = warp(fixed, w)`` with w the inverse displacement (fixed-point
iteration ``w(y) = -u(y + w(y))``), and ``moving(x + u(x)) = fixed(x)``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy
import scipy.ndimage as ndi
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from hypermorph_spatially_adaptive.tensors import check_spacing
from hypermorph_spatially_adaptive.transform import sample_at_points, warp

__all__ = [
    "CLASS_NAMES",
    "TISSUES",
    "GENERATOR_VERSION",
    "lame_from_young",
    "elasticity_operator",
    "load_vector",
    "solve_elasticity",
    "invert_displacement",
    "inverse_consistency",
    "default_max_displacement",
    "generate_subject",
    "split_sizes",
    "write_dataset",
    "main",
]

GENERATOR_VERSION = "1.0"
CLASS_NAMES = ("background", "soft_tissue", "lung", "bone", "liver")

#: Nominal tissue properties: Young's modulus E (kPa) and Poisson ratio nu. Ordered bone >> liver > soft tissue
#: > lung > air. Bone is compressed to 100x soft tissue (real bone is ~1e6x) to keep the system well conditioned;
#: air is a very soft, compressible material so the body can move inside the field of view.
TISSUES: dict[str, dict[str, float]] = {
    "background": {"E": 1.0, "nu": 0.1},
    "soft_tissue": {"E": 10.0, "nu": 0.3},
    "lung": {"E": 2.0, "nu": 0.3},
    "bone": {"E": 1000.0, "nu": 0.3},
    "liver": {"E": 30.0, "nu": 0.4},
}

# Mean intensities (HU) of the rendered tissues.
_HU = {"air": -1000.0, "fat": -90.0, "soft_tissue": 40.0, "lung": -860.0, "bone": 650.0, "liver": 60.0}
_SOLVERS = ("auto", "direct", "cg")


def lame_from_young(E: float | np.ndarray, nu: float | np.ndarray) -> tuple[Any, Any]:
    """Lame parameters ``(lam, mu)`` from Young's modulus ``E`` and Poisson ratio ``nu`` (floats or arrays).

    ``lam = E nu / ((1 + nu)(1 - 2 nu))``, ``mu = E / (2 (1 + nu))``, in the unit of ``E`` (kPa here).
    """
    E_, nu_ = np.asarray(E), np.asarray(nu)
    if not (np.all(E_ > 0) and np.all(nu_ > -1.0) and np.all(nu_ < 0.5)):
        raise ValueError(f"need E > 0 and -1 < nu < 0.5, got E={E}, nu={nu}")
    return E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu)), E / (2.0 * (1.0 + nu))


# ----------------------------------------------------------------------------------------------------------------
# Finite-difference linear elasticity
# ----------------------------------------------------------------------------------------------------------------

def _check_maps(lam_map: np.ndarray, mu_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lam, mu = np.asarray(lam_map, dtype=np.float64), np.asarray(mu_map, dtype=np.float64)
    if lam.ndim not in (2, 3) or lam.shape != mu.shape:
        raise ValueError(f"lam_map and mu_map must be 2D or 3D arrays [*S] of one shape, got {lam.shape} and "
                         f"{mu.shape}")
    if min(lam.shape) < 3:
        raise ValueError(f"lam_map needs at least 3 voxels per axis (border + interior), got shape {lam.shape}")
    if not (np.isfinite(lam).all() and np.isfinite(mu).all()) or (lam < 0).any() or (mu <= 0).any():
        raise ValueError("lam_map must be finite and >= 0 and mu_map finite and > 0 (kPa)")
    return lam, mu


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    return np.asarray(check_spacing(spacing, ndim), dtype=np.float64)


def elasticity_operator(lam_map: np.ndarray, mu_map: np.ndarray,
                        spacing: Sequence[float] | None = None) -> sp.csr_matrix:
    """Stiffness matrix K (sparse, symmetric, ``ndim*N`` square) of the discrete elastic energy ``u^T K u / 2``.

    ``lam_map``, ``mu_map``: Lame parameters ``[*S]`` (kPa) at the grid nodes. K acts on the displacement in
    voxels flattened from ``[ndim, *S]`` (C order: index ``k*N + flat(x)``); derivatives use ``spacing`` (mm),
    the energy is in kPa*mm^ndim. No boundary condition is applied (see :func:`solve_elasticity`).
    """
    lam, mu = _check_maps(lam_map, mu_map)
    shape, ndim, n = lam.shape, lam.ndim, lam.size
    h = _spacing(spacing, ndim)
    weight = float(np.prod(h)) / 2 ** ndim
    index = np.arange(n).reshape(shape)
    stiffness = None
    for signs in itertools.product((1, -1), repeat=ndim):
        # Nodes x whose neighbours x + s_a e_a all exist, and those neighbours.
        valid = tuple(slice(0, m - 1) if s == 1 else slice(1, m) for m, s in zip(shape, signs))
        node = index[valid].ravel()
        neighbour = [np.roll(index, -s, axis=a)[valid].ravel() for a, s in enumerate(signs)]
        rows = np.arange(node.size)

        def grad(k: int, a: int, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            # factor * d(U_k)/d(X_a) with U_k = h_k u_k (mm), X_a = h_a x_a (mm): one-sided along s_a.
            c = factor * h[k] * signs[a] / h[a]
            return (np.concatenate([rows, rows]), np.concatenate([k * n + neighbour[a], k * n + node]),
                    np.concatenate([np.full(node.size, c), np.full(node.size, -c)]))

        entries, weights = [], []
        # Row block 0: div u, weighted by lam; energy lam/2 (div u)^2.
        entries += [grad(k, k, 1.0) for k in range(ndim)]
        weights.append(lam.ravel()[node])
        # Row blocks eps_ka (k <= a), weighted by mu: mu ||eps||^2 = mu sum_k eps_kk^2 + 2 mu sum_{k<a} eps_ka^2;
        # the sqrt folds the factor 2 of u^T K u / 2 and the off-diagonal multiplicity into the rows.
        block = 1
        for k in range(ndim):
            for a in range(k, ndim):
                scale = 0.5 * np.sqrt(2.0 if k == a else 4.0)
                for kk, aa in ((k, a), (a, k)):
                    r, c, v = grad(kk, aa, scale)
                    entries.append((r + block * node.size, c, v))
                weights.append(mu.ravel()[node])
                block += 1
        r, c, v = (np.concatenate(parts) for parts in zip(*entries))
        b_matrix = sp.csr_matrix((v, (r, c)), shape=(block * node.size, ndim * n))
        part = (b_matrix.T @ sp.diags(np.concatenate(weights) * weight) @ b_matrix).tocsr()
        stiffness = part if stiffness is None else stiffness + part
    return stiffness.tocsr()


def load_vector(force: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Right-hand side f of ``K u = f`` (flattened ``[ndim * N]``) for a body-force density ``[ndim, *S]``.

    ``force[k]`` is the force density along array axis k in kPa/mm; each node carries its voxel volume, and the
    factor ``spacing[k]`` converts work on mm to work on the voxel unknowns.
    """
    force = np.asarray(force, dtype=np.float64)
    ndim = force.ndim - 1
    if ndim not in (2, 3) or force.shape[0] != ndim:
        raise ValueError(f"force must have shape [ndim, *S] with ndim 2 or 3, got {force.shape}")
    if not np.isfinite(force).all():
        raise ValueError("force contains NaN or infinite values")
    h = _spacing(spacing, ndim)
    return (force * float(np.prod(h)) * h.reshape((ndim,) + (1,) * ndim)).ravel()


def _border(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.ones(shape, dtype=bool)
    mask[tuple(slice(1, -1) for _ in shape)] = False
    return mask


def solve_elasticity(lam_map: np.ndarray, mu_map: np.ndarray, force: np.ndarray,
                     spacing: Sequence[float] | None = None, boundary: np.ndarray | None = None,
                     solver: str = "auto", rtol: float = 1e-8) -> np.ndarray:
    """Displacement ``[ndim, *S]`` (voxels) in equilibrium with body force ``force`` ``[ndim, *S]`` (kPa/mm).

    Solves ``div(lam tr(eps) I + 2 mu eps) + force = 0`` (:func:`elasticity_operator`) with Dirichlet values on
    the image border: ``boundary`` ``[ndim, *S]`` (voxels; only its border values are used) or 0 if None.
    ``solver``: ``"direct"`` (sparse LU), ``"cg"`` (conjugate gradients with a Jacobi preconditioner, relative
    residual ``rtol``) or ``"auto"`` (direct in 2D and for small 3D problems, CG otherwise).
    """
    lam, mu = _check_maps(lam_map, mu_map)
    shape, ndim = lam.shape, lam.ndim
    force = np.asarray(force, dtype=np.float64)
    if force.shape != (ndim,) + shape:
        raise ValueError(f"force must have shape {(ndim,) + shape} ([ndim, *S] like lam_map), got {force.shape}")
    if boundary is not None:
        boundary = np.asarray(boundary, dtype=np.float64)
        if boundary.shape != (ndim,) + shape or not np.isfinite(boundary).all():
            raise ValueError(f"boundary must be a finite array of shape {(ndim,) + shape}, got {boundary.shape}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    stiffness = elasticity_operator(lam, mu, spacing)
    rhs = load_vector(force, spacing)
    fixed = np.tile(_border(shape).ravel(), ndim)
    free = ~fixed
    u = np.zeros(ndim * lam.size)
    if boundary is not None:
        u[fixed] = boundary.ravel()[fixed]
        rhs = rhs - stiffness[:, fixed] @ u[fixed]
    k_free = stiffness[free][:, free]
    rhs = rhs[free]
    if solver == "auto":
        # SuperLU's fill-in explodes for 3D stencils beyond a few thousand unknowns; CG stays cheap there.
        solver = "direct" if ndim == 2 or k_free.shape[0] <= 6000 else "cg"
    if solver == "direct":
        u[free] = spla.spsolve(k_free.tocsc(), rhs, permc_spec="MMD_AT_PLUS_A")
    else:
        k_free = k_free.tocsr()
        inverse_diagonal = 1.0 / k_free.diagonal()
        preconditioner = spla.LinearOperator(k_free.shape, matvec=lambda v: inverse_diagonal * v)
        solution, info = spla.cg(k_free, rhs, rtol=rtol, atol=0.0, M=preconditioner, maxiter=20 * rhs.size)
        if info != 0:
            raise RuntimeError(f"conjugate gradients did not reach rtol={rtol} in {info} iterations")
        u[free] = solution
    return u.reshape((ndim,) + shape)


def _as_field(displacement: np.ndarray, name: str) -> np.ndarray:
    u = np.asarray(displacement, dtype=np.float64)
    if u.ndim not in (3, 4) or u.shape[0] != u.ndim - 1 or not np.isfinite(u).all():
        raise ValueError(f"{name} must be a finite array of shape [ndim, *S] with ndim 2 or 3, got {u.shape}")
    return u


def invert_displacement(displacement: np.ndarray, iterations: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Inverse ``w`` ``[ndim, *S]`` (voxels) of ``x -> x + u(x)`` on the same grid: ``y + w(y)`` maps back.

    Fixed-point iteration ``w(y) = -u(y + w(y))`` with linear interpolation of ``u`` ``[ndim, *S]`` (voxels),
    stopped when no value changes by more than ``tol`` voxels; it converges where ``|grad u| < 1``.
    """
    field = torch.from_numpy(_as_field(displacement, "displacement")).unsqueeze(0)
    inverse = -field
    for _ in range(iterations):
        updated = -warp(field, inverse)
        change = float((updated - inverse).abs().max())
        inverse = updated
        if change < tol:
            break
    return inverse[0].numpy()


def inverse_consistency(displacement: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Map ``[*S]`` of ``|u(x) + w(x + u(x))|`` (voxels): how far ``x -> x + u(x) -> .. + w(..)`` misses x."""
    u = torch.from_numpy(_as_field(displacement, "displacement")).unsqueeze(0)
    w = torch.from_numpy(_as_field(inverse, "inverse")).unsqueeze(0)
    if u.shape != w.shape:
        raise ValueError(f"inverse must have the shape of displacement {tuple(u.shape[1:])}, got {tuple(w.shape[1:])}")
    return (u + warp(w, u)).pow(2).sum(1).sqrt()[0].numpy()


# ----------------------------------------------------------------------------------------------------------------
# Anatomy, materials, load and image
# ----------------------------------------------------------------------------------------------------------------

def _wobble(coords: dict[str, np.ndarray], rng: np.random.Generator, amplitude: float, terms: int = 3) -> np.ndarray:
    """Smooth random shape perturbation: a sum of low-frequency plane waves of total amplitude ~``amplitude``."""
    out = np.zeros_like(next(iter(coords.values())))
    for _ in range(terms):
        direction = rng.normal(size=len(coords))
        direction *= rng.uniform(1.0, 3.0) * np.pi / np.linalg.norm(direction)
        phase = sum(d * c for d, c in zip(direction, coords.values()))
        out += amplitude / terms * rng.uniform(0.5, 1.0) * np.sin(phase + rng.uniform(0, 2 * np.pi))
    return out


def _radius(coords: dict[str, np.ndarray], centre: dict[str, float], semi: dict[str, float],
            power: float = 2.0) -> np.ndarray:
    """Superellipsoid radius ``(sum |(c - centre) / semi|^p)^(1/p)`` over the axes present (< 1 inside)."""
    total = sum(np.abs((coords[name] - centre[name]) / semi[name]) ** power for name in coords)
    return total ** (1.0 / power)


def _anatomy(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Random thorax label map ``[*S]`` (uint8, classes of :data:`CLASS_NAMES`) and helper regions.

    Geometry lives in normalised coordinates in [-1, 1] per axis: ``lat`` (axis 0, + = right), ``ap`` (3D axis 1,
    + = anterior) and ``cc`` (last axis, + = superior); a 2D phantom is the coronal plane ap = 0.
    """
    ndim = len(shape)
    names = ("lat", "cc") if ndim == 2 else ("lat", "ap", "cc")
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, m) for m in shape], indexing="ij")
    c = dict(zip(names, grids))
    lat, cc = c["lat"], c["cc"]
    ap = c.get("ap", np.zeros_like(lat))
    u = rng.uniform

    # Body: a barrel-shaped superelliptic cylinder along cc, cut by the top and bottom of the field of view like
    # a thorax CT (the Dirichlet border then holds the neck and the pelvis, not air). rho is the transverse
    # radius relative to the body outline at the same level (< 1 inside the body).
    # The lateral air gap leaves room for the chest wall to move out without folding the (soft) air.
    a, b, p, barrel = u(0.72, 0.84), u(0.62, 0.78), u(2.6, 3.6), u(0.08, 0.16)
    taper = 1.0 - barrel * (cc - u(-0.2, 0.2)) ** 2
    rho = (np.abs(lat / (a * taper)) ** p + np.abs(ap / (b * taper)) ** p) ** (1.0 / p)
    body = rho + _wobble(c, rng, 0.02) < 1.0
    wall = u(0.13, 0.18)
    mediastinum = u(0.08, 0.14) * a

    # Lungs between apex and base levels (the left base a little higher, the left lung narrower: the heart).
    lungs = np.zeros(shape, dtype=bool)
    extents = {}
    apex, base = u(0.72, 0.85), u(-0.45, -0.25)
    for side in (1, -1):  # right, left
        top, bottom = apex - u(0.0, 0.05), base + (0.0 if side == 1 else u(0.0, 0.08))
        narrow = 1.0 if side == 1 else u(0.85, 0.95)
        centre = dict(lat=side * u(0.45, 0.52) * a, ap=u(-0.05, 0.05) * b, cc=0.5 * (top + bottom))
        semi = dict(lat=u(0.4, 0.48) * a * narrow, ap=u(0.6, 0.75) * b, cc=0.5 * (top - bottom))
        lung = (_radius(c, centre, semi) + _wobble(c, rng, 0.06) < 1.0) & (rho < 1.0 - wall) & body
        lung &= side * lat > mediastinum
        lungs |= lung
        extents[side] = (centre, semi)

    # Liver: its dome rises into the base of the right lung (the diaphragm is the lung-liver interface); its
    # lower edge stays well above the bottom of the field of view so the abdomen below can be compressed.
    dome, liver_bottom = base + u(0.1, 0.2), u(-0.72, -0.6)
    liver_semi = dict(lat=u(0.5, 0.62) * a, ap=u(0.55, 0.75) * b, cc=0.5 * (dome - liver_bottom))
    liver_centre = dict(lat=u(0.25, 0.4) * a, ap=0.0, cc=0.5 * (dome + liver_bottom))
    liver_shape = _radius(c, liver_centre, liver_semi) + _wobble(c, rng, 0.05)
    liver = (liver_shape < 1.0) & (rho < 1.0 - 0.5 * wall) & body
    # The same shape mirrored under the left lung: stomach/spleen, soft tissue that carries the left diaphragm.
    mirrored = dict(c, lat=-lat)
    left_abdomen = (_radius(mirrored, liver_centre, liver_semi) < 1.0) & body & ~liver

    # Ribs: bands of the chest wall at regularly spaced levels over the lungs, sloping down anteriorly (3D).
    top = max(e[0]["cc"] + e[1]["cc"] for e in extents.values())
    bottom = min(e[0]["cc"] - e[1]["cc"] for e in extents.values())
    count = int(rng.integers(5, 10))
    levels = np.linspace(bottom + 0.05, top - 0.05, count)
    levels += u(-0.25, 0.25, count) * (levels[1] - levels[0])
    half_thickness = max(u(0.022, 0.04), 0.65 * 2.0 / (shape[-1] - 1))  # at least ~1.3 voxels thick
    rib_level = cc + 0.12 * ap
    ribs = np.zeros(shape, dtype=bool)
    for value in levels:
        ribs |= np.abs(rib_level - value) < half_thickness
    ribs &= (rho > 1.0 - 0.85 * wall) & (rho < 1.0 - 0.3 * wall) & body
    if ndim == 3:
        ribs &= ap < 0.55 * b  # costal cartilage gap anteriorly
        spine_centre = -u(0.6, 0.7) * b
        spine = (lat ** 2 + (ap - spine_centre) ** 2 < (u(0.09, 0.12) * min(a, b)) ** 2) & body
        ribs |= spine

    labels = np.zeros(shape, dtype=np.uint8)
    labels[body] = 1
    labels[lungs] = 2
    labels[liver] = 4
    labels[ribs & (labels == 1)] = 3
    fat = body & (rho > 1.0 - u(0.04, 0.08)) & (labels == 1)
    wall_band = body & (rho > 1.0 - wall) & (cc > bottom) & (cc < top) & ~lungs & ~liver
    radial = np.stack([lat / a, ap / b]) if ndim == 3 else np.stack([lat / a])
    radial = radial / np.maximum(np.sqrt((radial ** 2).sum(0)), 1e-6)
    regions = dict(fat=fat, left_abdomen=left_abdomen & (labels == 1), wall=wall_band, outward=radial)
    return labels, regions


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian random field of unit standard deviation and correlation length ``sigma`` voxels."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(field.std(), 1e-12)


def _vessels(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, width: float) -> np.ndarray:
    """Vessel-like network in [0, 1]: the zero set of a random field (2D curves) or of two fields (3D tubes)."""
    squared = sum(_noise(rng, shape, sigma) ** 2 for _ in range(len(shape) - 1))
    return np.exp(-0.5 * squared / width ** 2)


def _render(labels: np.ndarray, regions: dict[str, np.ndarray],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free CT-like image (HU, float64) and the lung vessel map used to place keypoints."""
    shape = labels.shape
    wide = 2.0 if len(shape) == 3 else 1.0  # 3D tubes need a wider band to be about as dense as 2D curves
    lung_vessels = np.maximum(0.6 * _vessels(rng, shape, 1.5, 0.3 * wide), _vessels(rng, shape, 3.0, 0.25 * wide))
    image = np.full(shape, _HU["air"])
    soft = labels == 1
    # Texture (muscle fibres, fat septa, liver vessels) well above the image noise, so that motion inside the
    # soft tissues is visible in the images, as it is in contrast-enhanced CT.
    image[soft] = (_HU["soft_tissue"] + 50.0 * _noise(rng, shape, 1.5))[soft]
    fat = regions["fat"]
    image[fat] = (_HU["fat"] + 30.0 * _noise(rng, shape, 1.5))[fat]
    lung = labels == 2
    image[lung] = (_HU["lung"] + 20.0 * _noise(rng, shape, 1.0) + 780.0 * lung_vessels)[lung]
    liver = labels == 4
    image[liver] = (_HU["liver"] + 25.0 * _noise(rng, shape, 1.5) + 100.0 * _vessels(rng, shape, 2.5, 0.25))[liver]
    bone = labels == 3
    image[bone] = (_HU["bone"] + 120.0 * _noise(rng, shape, 1.0))[bone]
    # Partial-volume blur of the sharp label edges.
    return ndi.gaussian_filter(image, 0.6), lung_vessels


def _keypoints(labels: np.ndarray, vessels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` fixed keypoints ``[N, ndim]`` (voxels): ~70% in the lungs (preferring vessels), the rest in
    the liver, 3 voxels off the image border (fewer only when the organs hold too few voxels on a coarse grid)."""
    shape = labels.shape
    margin = np.zeros(shape, dtype=bool)
    margin[tuple(slice(3, m - 3) for m in shape)] = True
    points = []
    for cls, share in ((2, 0.7), (4, 0.3)):
        wanted = int(round(share * count)) if cls == 2 else count - len(points)
        # Keep off the organ boundary (2 voxels) unless the organ is too small for that on a coarse grid.
        for depth in (2, 1, 0):
            tissue = labels == cls
            inside = (ndi.binary_erosion(tissue, iterations=depth) if depth else tissue) & margin
            if inside.sum() >= wanted:
                break
        candidates = np.flatnonzero(inside)
        wanted = min(wanted, candidates.size)
        if wanted <= 0:
            continue
        weights = (0.2 + vessels.ravel()[candidates]) if cls == 2 else np.ones(candidates.size)
        chosen = rng.choice(candidates, size=wanted, replace=False, p=weights / weights.sum())
        points.extend(np.stack(np.unravel_index(chosen, shape), axis=1))
    points = np.asarray(points, dtype=np.float64).reshape(-1, len(shape))
    # Sub-voxel positions; a jitter below 0.5 keeps each point in the voxel (and class) it was drawn from.
    return points + rng.uniform(-0.4, 0.4, size=points.shape)


def _min_jacobian_det(displacement: np.ndarray) -> float:
    """Smallest det(I + grad u) over the grid (central differences in voxels; > 0 means no folding)."""
    ndim = displacement.shape[0]
    gradients = [np.gradient(displacement[k]) for k in range(ndim)]
    jacobian = np.stack([np.stack([gradients[k][a] + (k == a) for a in range(ndim)], -1) for k in range(ndim)], -2)
    return float(np.linalg.det(jacobian).min())


def _resolve_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_grid(ndim: int, shape: Sequence[int] | None, spacing: Sequence[float] | None
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
                     solver: str = "auto") -> dict[str, Any]:
    """One random subject: anatomy, tissue materials, breathing load, true displacement and the image pair.

    ``shape`` defaults to 96x96 (2D) or 48^3 (3D), ``spacing`` to 2 mm. ``max_displacement`` (voxels; default
    :func:`default_max_displacement`, 3.84 at 64 px) bounds the largest displacement, drawn per subject as
    ``U(0.6, 1) * max_displacement``. ``noise_std`` (HU) is added independently to fixed and moving after
    warping. ``keypoints`` (default 60 in 2D, 200 in 3D) point pairs, fewer only if lungs and liver are too
    small on a very coarse grid. Stiffness factors per tissue are log-uniform in ``stiffness_range``.
    ``seed``: an int or a ``numpy.random.Generator``; equal seeds give identical subjects.

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
    shape, spacing = _check_grid(ndim, shape, spacing)
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
    rng = _resolve_rng(seed)

    labels, regions = _anatomy(shape, rng)
    fixed_clean, vessels = _render(labels, regions, rng)

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

    fixed_points = _keypoints(labels, vessels, int(keypoints), rng)
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


# ----------------------------------------------------------------------------------------------------------------
# Dataset writer and command line
# ----------------------------------------------------------------------------------------------------------------

def split_sizes(subjects: int, val: int | None = None, test: int | None = None) -> tuple[int, int, int]:
    """``(train, val, test)`` subject counts: by default the last 20% (at least 1 each when there are >= 3
    subjects) split equally into validation and test (test takes the odd one); ``val``/``test`` override."""
    if not isinstance(subjects, (int, np.integer)) or subjects < 1:
        raise ValueError(f"subjects must be a positive integer, got {subjects!r}")
    held_out = int(round(0.2 * subjects))
    default_val = held_out // 2
    default_test = held_out - default_val
    if subjects >= 3:
        default_val, default_test = max(default_val, 1), max(default_test, 1)
    val = default_val if val is None else val
    test = default_test if test is None else test
    for name, value in (("val", val), ("test", test)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if val + test > subjects - 1:
        raise ValueError(f"val + test must leave at least one training subject: val={val} + test={test} with "
                         f"subjects={subjects}")
    return subjects - val - test, int(val), int(test)


def _nifti(array: np.ndarray, spacing: tuple[float, ...]):
    import nibabel as nib

    affine = np.eye(4)
    affine[range(len(spacing)), range(len(spacing))] = spacing
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    return image


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a directory path, but {out} is an existing file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out directory {out} is not empty; pass overwrite=True (--overwrite) to replace it")


def write_dataset(out: str | Path, ndim: int = 2, subjects: int = 10, shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None, seed: int = 0, val: int | None = None,
                  test: int | None = None, max_displacement: float | None = None, noise_std: float = 20.0,
                  keypoints: int | None = None, solver: str = "auto", overwrite: bool = False,
                  progress: bool = True, extra_config: dict | None = None) -> Path:
    """Write a phantom dataset of ``subjects`` pairs to ``out`` in the NLST-like ``PHANTOM`` layout; return ``out``.

    Case ``XXXX`` (``0001``...) is :func:`generate_subject` with seed ``(seed, case number)``, so a case does not
    depend on how many are written. The first cases train, then validation, then test (:func:`split_sizes`).
    Everything is written into a temporary folder beside ``out`` and renamed into place at the end; a non-empty
    ``out`` is refused unless ``overwrite``. ``PHANTOM_dataset.json`` describes the dataset (pair lists,
    nominal materials, per-subject stiffness factors and load); ``phantom_config.json`` holds every option.
    Files: images float32 HU, masks and labels uint8, keypoints CSV, true displacement float32 ``[*S, ndim]``.
    """
    shape, spacing = _check_grid(ndim, shape, spacing)
    n_train, n_val, n_test = split_sizes(subjects, val, test)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    max_displacement = default_max_displacement(shape) if max_displacement is None else float(max_displacement)
    if not max_displacement > 0 or not noise_std >= 0:
        raise ValueError(f"max_displacement must be > 0 voxels and noise_std >= 0 HU, got {max_displacement!r} "
                         f"and {noise_std!r}")
    keypoints = (60 if ndim == 2 else 200) if keypoints is None else keypoints
    if not isinstance(keypoints, (int, np.integer)) or keypoints < 1:
        raise ValueError(f"keypoints must be a positive integer, got {keypoints!r}")
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    config = {
        "generator_version": GENERATOR_VERSION, "ndim": ndim, "subjects": int(subjects), "shape": list(shape),
        "spacing": list(spacing), "seed": int(seed), "val": n_val, "test": n_test,
        "max_displacement": max_displacement, "noise_std": float(noise_std), "keypoints": int(keypoints),
        "solver": solver, "stiffness_range": [0.5, 2.0], "tissues": TISSUES, "hu": _HU,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "torch": torch.__version__},
        **(extra_config or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for folder in ("imagesTr", "masksTr", "labelsTr", "keypointsTr", "groundtruthTr"):
            (tmp / folder).mkdir()
        pairs = {"train": [], "val": [], "test": []}
        records, started = {}, time.perf_counter()
        for number in tqdm(range(1, subjects + 1), desc="phantom subjects", unit="subject", disable=not progress):
            case = f"{number:04d}"
            split = "train" if number <= n_train else ("val" if number <= n_train + n_val else "test")
            subject = generate_subject(ndim, shape, spacing, np.random.default_rng([seed, number]),
                                       max_displacement=max_displacement, noise_std=noise_std,
                                       keypoints=keypoints, solver=solver)
            for index, side in (("0000", "fixed"), ("0001", "moving")):
                name = f"PHANTOM_{case}_{index}"
                _nifti(subject[side].astype(np.float32), spacing).to_filename(tmp / "imagesTr" / f"{name}.nii.gz")
                _nifti(subject[f"{side}_mask"].astype(np.uint8), spacing).to_filename(
                    tmp / "masksTr" / f"{name}.nii.gz")
                _nifti(subject[f"{side}_labels"].astype(np.uint8), spacing).to_filename(
                    tmp / "labelsTr" / f"{name}.nii.gz")
                np.savetxt(tmp / "keypointsTr" / f"{name}.csv", subject[f"{side}_keypoints"], fmt="%.6f",
                           delimiter=",")
            field = np.moveaxis(subject["displacement"], 0, -1).astype(np.float32)  # [*S, ndim]
            _nifti(field, spacing).to_filename(tmp / "groundtruthTr" / f"disp_{case}_{case}.nii.gz")
            pairs[split].append({"fixed": f"./imagesTr/PHANTOM_{case}_0000.nii.gz",
                                 "moving": f"./imagesTr/PHANTOM_{case}_0001.nii.gz"})
            records[case] = {
                "split": split,
                "stiffness_factors": subject["stiffness_factors"],
                "load": subject["load"],
                "num_keypoints": int(len(subject["fixed_keypoints"])),
                "min_jacobian_det": subject["min_jacobian_det"],
                "inverse_error_vox": subject["inverse_error"],
                "inverse_error_lung_liver_vox": subject["inverse_error_lung_liver"],
            }
        config["generation_seconds"] = round(time.perf_counter() - started, 3)
        description = {
            "name": "phantom",
            "description": "Synthetic thorax phantom with a heterogeneous linear-elastic true displacement "
                           "(phantom.py); fixed = expiration, moving = inspiration.",
            "ndim": ndim,
            "tensorImageShape": {"0": list(shape)},
            "spacing": list(spacing),
            "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
            "modality": {"0": "CT"},
            "numTraining": n_train,
            "training_paired_images": pairs["train"],
            "registration_val": pairs["val"],
            "registration_test": pairs["test"],
            "materials": {name: dict(zip(("lam", "mu"), lame_from_young(**TISSUES[name])), **TISSUES[name])
                          for name in CLASS_NAMES},
            "subjects": records,
            "seed": int(seed),
            "generator_version": GENERATOR_VERSION,
        }
        (tmp / "PHANTOM_dataset.json").write_text(json.dumps(description, indent=2))
        (tmp / "phantom_config.json").write_text(json.dumps(config, indent=2))
        os.chmod(tmp, 0o755)
        _check_out(out, overwrite)  # it may have been filled while we worked
        if out.is_dir() and any(out.iterdir()):
            # Swap by renames so a reader never sees a half-written dataset, then drop the old one.
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only for real defaults; None/False defaults are explained in the help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phantom.py", formatter_class=_HelpFormatter,
        description="Write a synthetic thorax phantom dataset (NLST-like layout, prefix PHANTOM) whose true "
                    "displacement solves heterogeneous linear elasticity.")
    parser.add_argument("--out", required=True, help="output dataset folder (written atomically; required)")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="2D coronal slices or 3D volumes")
    parser.add_argument("--subjects", type=int, default=10, help="number of subjects (= image pairs)")
    parser.add_argument("--size", type=int, nargs="+", default=None,
                        help="voxels per axis: one value for all axes or ndim values [default: 96 (2D), 48 (3D)]")
    parser.add_argument("--spacing", type=float, nargs="+", default=None,
                        help="mm per voxel: one value or ndim values [default: 2.0]")
    parser.add_argument("--seed", type=int, default=0, help="random seed (subject i uses (seed, i))")
    parser.add_argument("--val", type=int, default=None, help="validation subjects [default: half of the last 20%%]")
    parser.add_argument("--test", type=int, default=None, help="test subjects [default: the rest of the last 20%%]")
    parser.add_argument("--max-displacement", type=float, default=None,
                        help="bound on the true displacement in voxels [default: 6%% of the smallest size]")
    parser.add_argument("--noise-std", type=float, default=20.0, help="image noise (HU), independent per image")
    parser.add_argument("--keypoints", type=int, default=None, help="keypoints per subject [default: 60 2D, 200 3D]")
    parser.add_argument("--solver", choices=_SOLVERS, default="auto", help="sparse solver of the elasticity system")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: parse, validate everything, then write the dataset. Returns 0 on success."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        try:
            shape, spacing = _check_grid(args.ndim, args.size, args.spacing)
        except ValueError as error:
            raise ValueError(f"--size/--spacing: {error}") from None
        try:
            split_sizes(args.subjects, args.val, args.test)
        except ValueError as error:
            raise ValueError(f"--subjects/--val/--test: {error}") from None
        for name, value, ok in (("--max-displacement", args.max_displacement,
                                 args.max_displacement is None or args.max_displacement > 0),
                                ("--noise-std", args.noise_std, args.noise_std >= 0),
                                ("--keypoints", args.keypoints, args.keypoints is None or args.keypoints >= 1),
                                ("--seed", args.seed, args.seed >= 0)):
            if not ok:
                raise ValueError(f"{name} out of range: got {value}")
        _check_out(Path(args.out), args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    out = write_dataset(args.out, ndim=args.ndim, subjects=args.subjects, shape=shape, spacing=spacing,
                        seed=args.seed, val=args.val, test=args.test, max_displacement=args.max_displacement,
                        noise_std=args.noise_std, keypoints=args.keypoints, solver=args.solver,
                        overwrite=args.overwrite, progress=not args.quiet,
                        extra_config={"command": [Path(sys.argv[0]).name] + list(argv if argv is not None
                                                                                 else sys.argv[1:])})
    description = json.loads((out / "PHANTOM_dataset.json").read_text())
    errors = [s["inverse_error_lung_liver_vox"] for s in description["subjects"].values()]
    print(f"wrote {args.subjects} {args.ndim}D subjects {tuple(shape)} to {out} "
          f"(train/val/test {description['numTraining']}/{len(description['registration_val'])}/"
          f"{len(description['registration_test'])}); inverse error in lungs/liver <= {max(errors):.3f} voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
