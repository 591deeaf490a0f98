"""Heterogeneous linear elasticity on a voxel grid: the physics behind the phantom's true displacement.

Unknown: displacement u ``[ndim, *S]`` in voxels on the fixed grid; the physical displacement along axis k is
``spacing[k] * u[k]`` (mm) and derivatives along axis a are divided by ``spacing[a]``. Discrete energy

    E(u) = sum_x sum_s 2^-ndim vol [lam(x)/2 (div u)^2 + mu(x) ||eps(u)||_F^2]_(x, s) - sum_x vol b(x) . U(x)

where ``s`` runs over the 2^ndim corner orientations (forward or backward difference along each axis), i.e. the
strain of the corner simplex of node x spanned by its neighbours x + s_a e_a (linear finite elements on the 2^ndim
corner simplices of each voxel, averaged so that no direction is favoured), ``vol = prod(spacing)`` (mm^ndim),
lam and mu in kPa and ``b`` the body-force density in kPa/mm. Its stationarity equations ``K u = f`` with
``K = B^T W B`` (:func:`elasticity_operator`, :func:`load_vector`) discretise
``div(lam tr(eps) I + 2 mu eps) + b = 0`` consistently; affine fields in a homogeneous material are exact.
Dirichlet conditions hold on the image border (zero by default).
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ...core.tensors import check_spacing
from ...core.transform import warp

__all__ = ["SOLVERS", "lame_from_young", "elasticity_operator", "load_vector", "solve_elasticity",
           "invert_displacement", "inverse_consistency"]

#: Sparse solvers of :func:`solve_elasticity`.
SOLVERS = ("auto", "direct", "cg")


def lame_from_young(E: float | np.ndarray, nu: float | np.ndarray) -> tuple[Any, Any]:
    """Lame parameters ``(lam, mu)`` from Young's modulus ``E`` and Poisson ratio ``nu`` (floats or arrays).

    ``lam = E nu / ((1 + nu)(1 - 2 nu))``, ``mu = E / (2 (1 + nu))``, in the unit of ``E`` (kPa here).
    """
    E_, nu_ = np.asarray(E), np.asarray(nu)
    if not (np.all(E_ > 0) and np.all(nu_ > -1.0) and np.all(nu_ < 0.5)):
        raise ValueError(f"need E > 0 and -1 < nu < 0.5, got E={E}, nu={nu}")
    return E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu)), E / (2.0 * (1.0 + nu))


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
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
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
