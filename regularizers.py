"""Regularizers of a velocity field: linear elasticity and diffusion, with voxelwise Lame parameters.

Fields are ``[B, ndim, *S]`` in voxels (ndim 2 or 3), channel k is the component along array axis k. Derivatives
are forward differences ``d_a v_k(x) = v_k(x + e_a) - v_k(x)``, set to zero at the last index along axis a (the
convention of Reithmeir et al., MICCAI 2024). With ``spacing`` (mm per voxel, one value per axis) the field is
converted to mm and derivatives are taken per mm: ``d_a v_k = spacing_k / spacing_a * (v_k(x + e_a) - v_k(x))``,
so the energies are per unit volume of the physical strain (dimensionless gradients); without it everything is
in voxels. Parameters (``lam``, ``mu``, ``weight``) are floats, per-sample tensors ``[B]`` or voxelwise maps
``[B, 1, *S]``; :func:`lame_maps` turns per-class values and a label map into voxelwise maps.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from hypermorph_spatially_adaptive.tensors import (
    check_reduction,
    Parameter,
    as_voxelwise,
    check_field,
    check_spacing,
    reduce_loss,
)

__all__ = [
    "forward_difference",
    "elastic_energy",
    "diffusion_energy",
    "lame_maps",
    "class_map",
    "ElasticRegularizer",
    "DiffusionRegularizer",
]

Spacing = Sequence[float] | torch.Tensor | None


# --- forward differences with a zero far border --------------------------------------------------------------
# One allocation and one subtraction per call, forward and backward, instead of a slice-subtract-pad composition
# whose backward materialises several zero-filled full-size gradients. As an autograd op (forward_difference,
# diffusion_energy) the backward is the adjoint operator, itself an autograd op whose backward is the forward
# difference again, so higher-order gradients stay exact.

def _difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``out[i] = x[i + 1] - x[i]`` along ``dim``, ``out[-1] = 0``; same shape as ``x``."""
    n = x.shape[dim]
    out = torch.empty_like(x)
    if n > 1:
        torch.sub(x.narrow(dim, 1, n - 1), x.narrow(dim, 0, n - 1), out=out.narrow(dim, 0, n - 1))
    out.narrow(dim, n - 1, 1).zero_()
    return out


def _adjoint_into(out: torch.Tensor, g: torch.Tensor, dim: int) -> None:
    """Write the adjoint of :func:`_difference` into ``out``: ``g[i - 1] - g[i]`` with ``g[-1] := 0``, ``g[n-1]``
    unused (it multiplies the zero border)."""
    n = g.shape[dim]
    if n == 1:
        out.zero_()
        return
    torch.sub(g.narrow(dim, 0, n - 2), g.narrow(dim, 1, n - 2), out=out.narrow(dim, 1, n - 2))
    torch.neg(g.narrow(dim, 0, 1), out=out.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(g.narrow(dim, n - 2, 1))


def _adjoint_add(out: torch.Tensor, g: torch.Tensor, dim: int, alpha: float) -> None:
    """``out += alpha * adjoint(g)`` in place, as two shifted in-place updates (no temporary)."""
    n = g.shape[dim]
    if n > 1:
        out.narrow(dim, 1, n - 1).add_(g.narrow(dim, 0, n - 1), alpha=alpha)
        out.narrow(dim, 0, n - 1).sub_(g.narrow(dim, 0, n - 1), alpha=alpha)


def _difference_adjoint(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Adjoint of :func:`_difference`, same shape as ``g``."""
    out = torch.empty_like(g)
    _adjoint_into(out, g, dim)
    return out


class _Difference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        return _difference(x, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _DifferenceAdjoint.apply(grad, ctx.dim), None


class _DifferenceAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        return _difference_adjoint(g, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Difference.apply(grad, ctx.dim), None


def forward_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Forward difference of ``x`` along ``dim`` (any shape): ``x[i + 1] - x[i]``, zero at the last index.

    Differentiable to any order; the output has the shape of ``x``. Units: those of ``x`` per index step.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must index one of the {x.dim()} dimensions of x (shape {tuple(x.shape)}), got {dim}")
    return _Difference.apply(x, dim % x.dim())


# --- energies ------------------------------------------------------------------------------------------------

def _weighted(term: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """``term * weight``; ``term`` is a fresh temporary, overwritten in place where autograd allows."""
    if not isinstance(weight, torch.Tensor):
        return term.mul_(weight)
    # In place, mul_ would overwrite the factor that the gradient with respect to weight needs.
    return term * weight if weight.requires_grad else term.mul_(weight)


# --- elastic energy: one fused autograd op ---------------------------------------------------------------------
# Forward and backward are written out (the backward from the closed-form derivative) so that nothing but the
# inputs is kept between them and every pass over the grid is an in-place or out= operation: about 60 passes
# over a scalar map per forward+backward in 3D, against ~85 for the same expression left to autograd, and no
# saved intermediates. Notation: D[a] = differences of all components along axis a ``[B, ndim, *S]`` (voxels),
# d_a v_k = D[a][:, k], c_ak = spacing_k / spacing_a, so the physical gradient is J[k, a] = c_ak d_a v_k.

def _differences(velocity: torch.Tensor) -> list[torch.Tensor]:
    """Forward differences of all components along each axis: one subtraction per axis on the whole field."""
    return [_difference(velocity, 2 + a) for a in range(velocity.dim() - 2)]


def _entry(diffs: list[torch.Tensor], axis: int, component: int) -> torch.Tensor:
    """View ``[B, 1, *S]`` of d_axis v_component."""
    return diffs[axis].narrow(1, component, 1)


def _divergence(diffs: list[torch.Tensor]) -> torch.Tensor:
    """``sum_k d_k v_k`` ``[B, 1, *S]`` (c_kk = 1: spacing cancels on the diagonal)."""
    div = torch.add(_entry(diffs, 0, 0), _entry(diffs, 1, 1))
    for k in range(2, len(diffs)):
        div.add_(_entry(diffs, k, k))
    return div


def _pair_ratio(spacing: tuple[float, ...], i: int, j: int) -> tuple[float, float]:
    """(c_ij^2, c_ji / c_ij) for i < j, where S_ij = J_ji + J_ij = c_ij (d_i v_j + c_ji / c_ij d_j v_i)."""
    c_ij = spacing[j] / spacing[i]
    return c_ij * c_ij, (spacing[i] / spacing[j]) / c_ij


def _strain_norm(diffs: list[torch.Tensor], spacing: tuple[float, ...]) -> torch.Tensor:
    """``||eps||_F^2 = sum_i J_ii^2 + 1/2 sum_{i<j} (J_ij + J_ji)^2`` ``[B, 1, *S]``; overwrites the d_i v_j, i < j."""
    ndim = len(diffs)
    norm = torch.mul(_entry(diffs, 0, 0), _entry(diffs, 0, 0))
    for k in range(1, ndim):
        norm.addcmul_(_entry(diffs, k, k), _entry(diffs, k, k))
    for i in range(ndim):
        for j in range(i + 1, ndim):
            scale, ratio = _pair_ratio(spacing, i, j)
            pair = torch.add(_entry(diffs, i, j), _entry(diffs, j, i), alpha=ratio, out=_entry(diffs, i, j))
            norm.addcmul_(pair, pair, value=0.5 * scale)
    return norm


def _compact(grad: torch.Tensor) -> torch.Tensor:
    """A gradient broadcast over the grid (as ``mean``/``sum`` produce) as a ``[B, 1, 1, ...]`` view: later
    products with it then broadcast instead of streaming a full-size tensor."""
    if grad.dim() > 2 and all(stride == 0 for stride in grad.stride()[2:]):
        return grad[(slice(None), slice(None)) + (slice(0, 1),) * (grad.dim() - 2)]
    return grad


class _ElasticEnergy(torch.autograd.Function):
    """Per-voxel ``lam/2 tr(J)^2 + mu ||eps||_F^2`` ``[B, 1, *S]``; inputs validated by :func:`elastic_energy`."""

    @staticmethod
    def forward(ctx, velocity, lam, mu, spacing):
        ctx.save_for_backward(velocity, *(p for p in (lam, mu) if isinstance(p, torch.Tensor)))
        # Floats are kept on ctx; tensors only through save_for_backward (None marks "saved tensor").
        ctx.lam, ctx.mu = (None if isinstance(p, torch.Tensor) else p for p in (lam, mu))
        ctx.spacing = spacing
        diffs = _differences(velocity)
        div_sq = _divergence(diffs).square_()
        energy = _strain_norm(diffs, spacing).mul_(mu)
        if isinstance(lam, torch.Tensor):
            return energy.addcmul_(div_sq, lam, value=0.5)
        return energy.add_(div_sq, alpha=0.5 * lam)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved = list(ctx.saved_tensors)
        velocity = saved.pop(0)
        lam = saved.pop(0) if ctx.lam is None else ctx.lam
        mu = saved.pop(0) if ctx.mu is None else ctx.mu
        spacing, ndim = ctx.spacing, velocity.dim() - 2
        need_velocity, need_lam, need_mu = ctx.needs_input_grad[:3]
        grad = _compact(grad)
        diffs = _differences(velocity)
        div = _divergence(diffs)
        grad_lam = grad_mu = grad_velocity = None
        if need_lam:
            grad_lam = div.square().mul_(grad).mul_(0.5).sum_to_size(lam.shape)
        if need_mu:
            grad_mu = _strain_norm(_differences(velocity), spacing).mul_(grad).sum_to_size(mu.shape)
        if not need_velocity:
            return grad_velocity, grad_lam, grad_mu, None

        # dE/d(d_a v_k) = g (lam div [a == k] + mu c_ak S_ak), S = J + J^T. Each is written over the d_a v_k it
        # replaces: the diagonal as g lam div + 2 g mu d_k v_k; for a pair i < j, T = g mu (d_i v_j + r d_j v_i)
        # serves both entries, as c_ij^2 T for d_i v_j and as T for d_j v_i (c_ij c_ji = 1).
        grad_mu_term = grad * mu
        weighted_div = div.mul_(grad * lam)
        for k in range(ndim):
            torch.addcmul(weighted_div, _entry(diffs, k, k), grad_mu_term, value=2.0, out=_entry(diffs, k, k))
        del weighted_div, div
        pair_scale = {}
        for i in range(ndim):
            for j in range(i + 1, ndim):
                scale, ratio = _pair_ratio(spacing, i, j)
                torch.add(_entry(diffs, i, j), _entry(diffs, j, i), alpha=ratio, out=_entry(diffs, i, j))
                _entry(diffs, i, j).mul_(grad_mu_term)
                pair_scale[(i, j)] = scale

        # grad v_k = sum_a adjoint_a(dE/d(d_a v_k)), accumulated straight into the output.
        grad_velocity = torch.empty_like(velocity)
        for k in range(ndim):
            out = grad_velocity.narrow(1, k, 1)
            _adjoint_into(out, _entry(diffs, k, k), 2 + k)
            for a in range(ndim):
                if a < k:  # d_a v_k is the first entry of pair (a, k)
                    _adjoint_add(out, _entry(diffs, a, k), 2 + a, pair_scale[(a, k)])
                elif a > k:  # d_a v_k is the second entry of pair (k, a), whose T sits in d_k v_a
                    _adjoint_add(out, _entry(diffs, k, a), 2 + a, 1.0)
        return grad_velocity, grad_lam, grad_mu, None


def elastic_energy(velocity: torch.Tensor, lam: Parameter, mu: Parameter, spacing: Spacing = None,
                   reduction: str = "mean") -> torch.Tensor:
    """Linear-elastic energy of a velocity field ``[B, ndim, *S]`` (voxels).

    Per voxel ``lam / 2 * (div v)^2 + mu / 4 * sum_ij (d_i v_j + d_j v_i)^2`` with i, j over all ndim axes, i.e.
    ``lam / 2 * tr(eps)^2 + mu * ||eps||_F^2`` for the symmetric gradient ``eps = (J + J^T) / 2``, where
    ``J[j, i] = d_i v_j`` is the derivative of component j along axis i. Derivatives are forward differences set
    to zero at the last index of their axis (so the far faces still carry the other axes' terms). With
    ``spacing`` (mm per voxel, ndim floats) ``d_i v_j = spacing_j / spacing_i * diff_i v_j`` (mm per mm);
    without it, voxels. ``lam`` and ``mu`` are floats, per-sample tensors ``[B]`` or voxelwise maps
    ``[B, 1, *S]``, non-negative (units of the energy per squared strain).

    Differentiable once with respect to ``velocity`` and tensor ``lam``/``mu`` (a fused op with a hand-written
    backward that keeps no intermediates; second derivatives are not supported).

    Returns the map ``[B, 1, *S]`` for ``reduction="none"``, its mean over all voxels and the batch (border
    included) for ``"mean"``, or its sum for ``"sum"``.
    """
    check_reduction(reduction)
    ndim = check_field(velocity, "velocity")
    spacing = check_spacing(spacing, ndim)
    lam = as_voxelwise(lam, velocity, "lam")
    mu = as_voxelwise(mu, velocity, "mu")
    return reduce_loss(_ElasticEnergy.apply(velocity, lam, mu, spacing), reduction)


def diffusion_energy(velocity: torch.Tensor, weight: Parameter, spacing: Spacing = None,
                     reduction: str = "mean") -> torch.Tensor:
    """Diffusion energy of a velocity field ``[B, ndim, *S]`` (voxels): ``weight * sum_a sum_k (d_a v_k)^2``.

    No 1/2 factor; i and k run over all ndim axes and components. Same derivatives as :func:`elastic_energy`:
    forward differences, zero at the last index of their axis, ``d_a v_k = spacing_k / spacing_a * diff_a v_k``
    with ``spacing`` (mm per voxel), voxels without. ``weight`` is a float, a per-sample tensor ``[B]`` or a
    voxelwise map ``[B, 1, *S]``, non-negative. Returns the map ``[B, 1, *S]`` (``"none"``), its mean over all
    voxels and the batch, border included (``"mean"``) or its sum (``"sum"``).
    """
    check_reduction(reduction)
    ndim = check_field(velocity, "velocity")
    spacing = check_spacing(spacing, ndim)
    weight = as_voxelwise(weight, velocity, "weight")

    total = None
    for a in range(ndim):
        for k, grad in enumerate(_Difference.apply(velocity, 2 + a).unbind(1)):
            c = spacing[k] / spacing[a]
            if total is None:
                total = grad.square() if c == 1.0 else grad.square().mul_(c * c)
            else:
                total = total.addcmul_(grad, grad, value=c * c)
    energy = _weighted(total.unsqueeze(1), weight)
    return reduce_loss(energy, reduction)


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be an integer torch.Tensor [B, 1, *S], got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype (int64 class indices), got {labels.dtype}")
    if labels.dim() not in (4, 5) or labels.shape[1] != 1:
        raise ValueError(f"labels must have shape [B, 1, *S] with 2 or 3 spatial axes, got {tuple(labels.shape)}")


def _class_values(values: torch.Tensor, name: str, batch: int) -> torch.Tensor:
    """Per-class values ``[B, C]`` or ``[C]`` -> ``[B, C]``, checked finite and non-negative."""
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor [B, C] or [C], got "
                         f"{type(values).__name__ if not isinstance(values, torch.Tensor) else values.dtype}")
    if values.dim() == 1:
        values = values.unsqueeze(0).expand(batch, -1)
    elif values.dim() != 2 or values.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B={batch}, C] or [C], got {tuple(values.shape)}")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return values


def _gather_maps(labels: torch.Tensor, *per_class: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Voxelwise maps ``[B, 1, *S]`` of per-class values ``[B, C]`` (labels checked to lie in ``0..C-1``)."""
    classes = per_class[0].shape[1]
    if labels.numel():
        low, high = (int(x) for x in torch.aminmax(labels))
        if low < 0 or high >= classes:
            raise ValueError(f"labels must lie in 0..{classes - 1} (C={classes} classes), got values in {low}..{high}")
    index = labels.reshape(labels.shape[0], -1).to(device=per_class[0].device, dtype=torch.int64)
    return tuple(torch.gather(values, 1, index).view(labels.shape) for values in per_class)


def class_map(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Voxelwise map ``v(x) = values[label(x)]`` ``[B, 1, *S]`` of per-class values ``[B, C]`` or ``[C]``.

    ``labels`` ``[B, 1, *S]`` integer with values ``0..C-1``; values non-negative and finite. Differentiable with
    respect to ``values``.
    """
    _check_labels(labels)
    return _gather_maps(labels, _class_values(values, "values", labels.shape[0]))[0]


def lame_maps(labels: torch.Tensor, lam: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxelwise Lame maps ``lam(x) = lam[label(x)]``, ``mu(x) = mu[label(x)]``, each ``[B, 1, *S]``.

    ``labels`` ``[B, 1, *S]`` integer with values ``0..C-1``; ``lam`` and ``mu`` per class ``[B, C]`` or ``[C]``
    (shared by the batch), non-negative and finite. Differentiable with respect to ``lam`` and ``mu``.
    """
    _check_labels(labels)
    lam, mu = _class_values(lam, "lam", labels.shape[0]), _class_values(mu, "mu", labels.shape[0])
    if lam.shape[1] != mu.shape[1]:
        raise ValueError(f"mu must have as many classes as lam ({lam.shape[1]}), got shape {tuple(mu.shape)}")
    lam_map, mu_map = _gather_maps(labels, lam, mu)
    return lam_map, mu_map


# --- modules -------------------------------------------------------------------------------------------------

def _check_module_spacing(spacing: Spacing) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = spacing.detach().flatten().tolist() if isinstance(spacing, torch.Tensor) else list(spacing)
    if len(values) not in (2, 3):
        raise ValueError(f"spacing must have 2 or 3 values (mm per voxel, one per axis), got {values}")
    return check_spacing(values, len(values))


class ElasticRegularizer(nn.Module):
    """Module form of :func:`elastic_energy`: holds ``spacing`` (mm per voxel or None) and ``reduction``.

    ``forward(velocity [B, ndim, *S], lam, mu)``; see :func:`elastic_energy` for shapes and normalisation.
    """

    def __init__(self, spacing: Spacing = None, reduction: str = "mean"):
        super().__init__()
        self.spacing = _check_module_spacing(spacing)
        self.reduction = check_reduction(reduction)

    def forward(self, velocity: torch.Tensor, lam: Parameter, mu: Parameter) -> torch.Tensor:
        return elastic_energy(velocity, lam, mu, self.spacing, self.reduction)

    def extra_repr(self) -> str:
        return f"spacing={self.spacing}, reduction={self.reduction!r}"


class DiffusionRegularizer(nn.Module):
    """Module form of :func:`diffusion_energy`: holds ``spacing`` (mm per voxel or None) and ``reduction``.

    ``forward(velocity [B, ndim, *S], weight)``; see :func:`diffusion_energy` for shapes and normalisation.
    """

    def __init__(self, spacing: Spacing = None, reduction: str = "mean"):
        super().__init__()
        self.spacing = _check_module_spacing(spacing)
        self.reduction = check_reduction(reduction)

    def forward(self, velocity: torch.Tensor, weight: Parameter) -> torch.Tensor:
        return diffusion_energy(velocity, weight, self.spacing, self.reduction)

    def extra_repr(self) -> str:
        return f"spacing={self.spacing}, reduction={self.reduction!r}"
