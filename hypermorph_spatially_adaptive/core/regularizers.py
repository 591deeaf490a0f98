"""Regularizers of a velocity field: linear elasticity, diffusion and bending energy, with voxelwise parameters,
and the table :data:`REGULARIZERS` that every other module reads a regularizer from.

Fields are ``[B, ndim, *S]`` in voxels (ndim 2 or 3), channel k is the component along array axis k. Derivatives
are forward differences ``d_a v_k(x) = v_k(x + e_a) - v_k(x)``, set to zero at the last index along axis a (the
convention of Reithmeir et al., MICCAI 2024). With ``spacing`` (mm per voxel, one value per axis) the field is
converted to mm and derivatives are taken per mm: ``d_a v_k = spacing_k / spacing_a * (v_k(x + e_a) - v_k(x))``,
so the energies are per unit volume of the physical strain (dimensionless gradients); without it everything is
in voxels. Parameters (``lam``, ``mu``, ``weight``) are floats, per-sample tensors ``[B]`` or voxelwise maps
``[B, 1, *S]``; :func:`lame_maps` turns per-class values and a label map into voxelwise maps.

:func:`elastic_energy` runs a fused autograd op (:mod:`.kernels`); :func:`elastic_energy_reference` is the same
energy written as the formula reads, the one to check against the paper.

A new regularizer is one energy function and one :class:`Regularizer` entry of :data:`REGULARIZERS`: the training
objective, the parameter sampling, the models and the checkpoints look it up by name.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn as nn

from .kernels import Difference, FusedElasticEnergy, forward_difference
from .tensors import Parameter, as_voxelwise, check_field, check_reduction, check_spacing, reduce_loss

__all__ = [
    "forward_difference",
    "elastic_energy",
    "elastic_energy_reference",
    "diffusion_energy",
    "bending_energy",
    "lame_maps",
    "class_map",
    "class_maps",
    "ElasticRegularizer",
    "DiffusionRegularizer",
    "Regularizer",
    "REGULARIZERS",
    "get_regularizer",
]

Spacing = Sequence[float] | torch.Tensor | None


# --- energies ------------------------------------------------------------------------------------------------

def _weighted(term: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """``term * weight``; ``term`` is a fresh temporary, overwritten in place where autograd allows."""
    if not isinstance(weight, torch.Tensor):
        return term.mul_(weight)
    # In place, mul_ would overwrite the factor that the gradient with respect to weight needs.
    return term * weight if weight.requires_grad else term.mul_(weight)


def elastic_energy(velocity: torch.Tensor, lam: Parameter, mu: Parameter, spacing: Spacing = None,
                   reduction: str = "mean", *, validate: bool = True) -> torch.Tensor:
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
    included) for ``"mean"``, or its sum for ``"sum"``. ``validate=False`` skips the checks that read the data
    (finite field, finite non-negative parameters); shapes are always checked.
    """
    check_reduction(reduction)
    ndim = check_field(velocity, "velocity", check_values=validate)
    spacing = check_spacing(spacing, ndim)
    lam = as_voxelwise(lam, velocity, "lam", check_values=validate)
    mu = as_voxelwise(mu, velocity, "mu", check_values=validate)
    return reduce_loss(FusedElasticEnergy.apply(velocity, lam, mu, spacing), reduction)


def _padded_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x[i + 1] - x[i]`` along ``dim``, 0 at the last index (same shape as ``x``)."""
    return torch.cat([torch.diff(x, dim=dim), torch.zeros_like(x.narrow(dim, 0, 1))], dim=dim)


def elastic_energy_reference(velocity: torch.Tensor, lam: Parameter, mu: Parameter, spacing: Spacing = None,
                             reduction: str = "mean") -> torch.Tensor:
    """:func:`elastic_energy` written as the paper's formula, term by term with plain autograd (slower, more memory).

    Per voxel ``lam / 2 * (div v)^2 + mu / 4 * sum_ij (d_i v_j + d_j v_i)^2``, ``d_i v_j`` the forward difference of
    component j along axis i (0 at the last index), times ``spacing_j / spacing_i`` with ``spacing`` (mm per mm).
    Same arguments, shapes and reductions as :func:`elastic_energy`.
    """
    check_reduction(reduction)
    ndim = check_field(velocity, "velocity")
    spacing = check_spacing(spacing, ndim)
    lam, mu = as_voxelwise(lam, velocity, "lam"), as_voxelwise(mu, velocity, "mu")

    def d(i: int, j: int) -> torch.Tensor:  # d_i v_j [B, 1, *S]
        return _padded_difference(velocity[:, j:j + 1], 2 + i) * (spacing[j] / spacing[i])

    divergence = sum(d(k, k) for k in range(ndim))
    shear = sum((d(i, j) + d(j, i)) ** 2 for i in range(ndim) for j in range(ndim))
    return reduce_loss(lam / 2 * divergence ** 2 + mu / 4 * shear, reduction)


def diffusion_energy(velocity: torch.Tensor, weight: Parameter, spacing: Spacing = None,
                     reduction: str = "mean", *, validate: bool = True) -> torch.Tensor:
    """Diffusion energy of a velocity field ``[B, ndim, *S]`` (voxels): ``weight * sum_a sum_k (d_a v_k)^2``.

    No 1/2 factor; i and k run over all ndim axes and components. Same derivatives as :func:`elastic_energy`:
    forward differences, zero at the last index of their axis, ``d_a v_k = spacing_k / spacing_a * diff_a v_k``
    with ``spacing`` (mm per voxel), voxels without. ``weight`` is a float, a per-sample tensor ``[B]`` or a
    voxelwise map ``[B, 1, *S]``, non-negative. Returns the map ``[B, 1, *S]`` (``"none"``), its mean over all
    voxels and the batch, border included (``"mean"``) or its sum (``"sum"``). ``validate=False`` as for
    :func:`elastic_energy`.
    """
    check_reduction(reduction)
    ndim = check_field(velocity, "velocity", check_values=validate)
    spacing = check_spacing(spacing, ndim)
    weight = as_voxelwise(weight, velocity, "weight", check_values=validate)

    total = None
    for a in range(ndim):
        for k, grad in enumerate(Difference.apply(velocity, 2 + a).unbind(1)):
            c = spacing[k] / spacing[a]
            if total is None:
                total = grad.square() if c == 1.0 else grad.square().mul_(c * c)
            else:
                total = total.addcmul_(grad, grad, value=c * c)
    energy = _weighted(total.unsqueeze(1), weight)
    return reduce_loss(energy, reduction)


def _second_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Central ``x[i + 1] - 2 x[i] + x[i - 1]`` along ``dim``, 0 at the first and last index (same shape)."""
    n = x.shape[dim]
    if n < 3:
        return torch.zeros_like(x)
    inner = x.narrow(dim, 2, n - 2) - 2 * x.narrow(dim, 1, n - 2) + x.narrow(dim, 0, n - 2)
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([zero, inner, zero], dim=dim)


def bending_energy(velocity: torch.Tensor, weight: Parameter, spacing: Spacing = None,
                   reduction: str = "mean", *, validate: bool = True) -> torch.Tensor:
    """Bending energy (thin-plate) of a velocity field ``[B, ndim, *S]`` (voxels).

    Per voxel ``weight * sum_k [sum_a (d_aa v_k)^2 + 2 sum_{a<b} (d_ab v_k)^2]``, the squared Frobenius norm of
    every component's Hessian; no 1/2 factor. ``d_aa`` is the central second difference (0 at the first and
    last index of axis a), ``d_ab`` the forward difference along b of the forward difference along a (0 at the
    last index of either axis). With ``spacing`` (mm per voxel) the field is in mm and derivatives per mm:
    ``d_ab v_k = spacing_k / (spacing_a spacing_b) * diff_b diff_a v_k`` (units 1/mm^2); without it, voxels.
    Zero for every affine field. ``weight`` is a float, a per-sample tensor ``[B]`` or a voxelwise map
    ``[B, 1, *S]``, non-negative. Returns the map ``[B, 1, *S]`` (``"none"``), its mean over all voxels and the
    batch, border included (``"mean"``) or its sum (``"sum"``). ``validate=False`` as for :func:`elastic_energy`.
    """
    check_reduction(reduction)
    ndim = check_field(velocity, "velocity", check_values=validate)
    spacing = check_spacing(spacing, ndim)
    weight = as_voxelwise(weight, velocity, "weight", check_values=validate)
    total = torch.zeros_like(velocity[:, :1])
    for k in range(ndim):
        component = velocity[:, k:k + 1]
        for a in range(ndim):
            pure = _second_difference(component, 2 + a) * (spacing[k] / spacing[a] ** 2)
            total = total + pure.square()
            for b in range(a + 1, ndim):
                mixed = _padded_difference(_padded_difference(component, 2 + a), 2 + b)
                total = total + 2 * (mixed * (spacing[k] / (spacing[a] * spacing[b]))).square()
    return reduce_loss(_weighted(total, weight), reduction)


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be an integer torch.Tensor [B, 1, *S], got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype (int64 class indices), got {labels.dtype}")
    if labels.dim() not in (4, 5) or labels.shape[1] != 1:
        raise ValueError(f"labels must have shape [B, 1, *S] with 2 or 3 spatial axes, got {tuple(labels.shape)}")


def _class_values(values: torch.Tensor, name: str, batch: int, validate: bool) -> torch.Tensor:
    """Per-class values ``[B, C]`` or ``[C]`` -> ``[B, C]``, checked finite and non-negative when ``validate``."""
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor [B, C] or [C], got "
                         f"{type(values).__name__ if not isinstance(values, torch.Tensor) else values.dtype}")
    if values.dim() == 1:
        values = values.unsqueeze(0).expand(batch, -1)
    elif values.dim() != 2 or values.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B={batch}, C] or [C], got {tuple(values.shape)}")
    if validate and values.numel():
        low, high = torch.aminmax(values)  # one pass and one sync: NaN fails both comparisons
        if not bool((low >= 0) & (high < float("inf"))):
            raise ValueError(f"{name} must be finite and non-negative")
    return values


def _gather_maps(labels: torch.Tensor, *per_class: torch.Tensor, validate: bool) -> tuple[torch.Tensor, ...]:
    """Voxelwise maps ``[B, 1, *S]`` of per-class values ``[B, C]`` (labels checked to lie in ``0..C-1``)."""
    classes = per_class[0].shape[1]
    if validate and labels.numel():
        low, high = (int(x) for x in torch.aminmax(labels))
        if low < 0 or high >= classes:
            raise ValueError(f"labels must lie in 0..{classes - 1} (C={classes} classes), got values in {low}..{high}")
    index = labels.reshape(labels.shape[0], -1).to(device=per_class[0].device, dtype=torch.int64)
    return tuple(torch.gather(values, 1, index).view(labels.shape) for values in per_class)


def class_maps(labels: torch.Tensor, *values: torch.Tensor, names: Sequence[str] | None = None,
               validate: bool = True) -> tuple[torch.Tensor, ...]:
    """Voxelwise maps ``v(x) = v[label(x)]`` ``[B, 1, *S]``, one for each per-class tensor ``[B, C]`` or ``[C]``.

    ``labels`` ``[B, 1, *S]`` integer with values ``0..C-1``; values non-negative and finite, all with the same C
    (neither is read with ``validate=False``); ``names`` name them in errors. Differentiable with respect to the
    values.
    """
    _check_labels(labels)
    if not values:
        raise ValueError("class_maps needs at least one tensor of per-class values")
    names = list(names) if names is not None else [f"values[{i}]" for i in range(len(values))]
    batch = labels.shape[0]
    checked = [_class_values(v, name, batch, validate) for v, name in zip(values, names)]
    for name, v, given in zip(names[1:], checked[1:], values[1:]):
        if v.shape[1] != checked[0].shape[1]:
            raise ValueError(f"{name} must have as many classes as {names[0]} ({checked[0].shape[1]}), "
                             f"got shape {tuple(given.shape)}")
    return _gather_maps(labels, *checked, validate=validate)


def class_map(labels: torch.Tensor, values: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """The one map of :func:`class_maps` for per-class ``values`` ``[B, C]`` or ``[C]``."""
    return class_maps(labels, values, names=("values",), validate=validate)[0]


def lame_maps(labels: torch.Tensor, lam: torch.Tensor, mu: torch.Tensor, *,
              validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxelwise Lame maps ``lam(x) = lam[label(x)]``, ``mu(x) = mu[label(x)]`` (:func:`class_maps`)."""
    lam_map, mu_map = class_maps(labels, lam, mu, names=("lam", "mu"), validate=validate)
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


# --- the table -----------------------------------------------------------------------------------------------

class Regularizer(NamedTuple):
    """One regularizer a model can be conditioned for.

    ``values``: the names of its values per class, in parameter-vector order (a vector for C classes holds all
    classes' first value, then all classes' second, ...). ``energy(velocity, *values, spacing=, validate=)``: the
    mean energy of a velocity ``[B, ndim, *S]`` (voxels) for values that are floats, ``[B]`` or voxelwise
    ``[B, 1, *S]``. The similarity term is weighted by ``1 - sum(values)`` (:meth:`similarity_weight`), so every
    value lies in [0, 1] with their sum at most 1.
    """

    name: str
    values: tuple[str, ...]
    energy: Callable[..., torch.Tensor]
    summary: str

    @property
    def values_per_class(self) -> int:
        return len(self.values)

    def similarity_weight(self, *values):
        """``1 - sum(values)``, clamped at 0 (a valid sum that rounds to just above 1 gives 0, not a tiny negative)."""
        total = sum(values)
        if isinstance(total, torch.Tensor):
            return (1.0 - total).clamp_min(0.0)
        return max(0.0, 1.0 - float(total))


#: Every regularizer by name; the first is the default.
REGULARIZERS: dict[str, Regularizer] = {
    "elastic": Regularizer("elastic", ("lam", "mu"), elastic_energy,
                           "linear elasticity, lam/2 (div v)^2 + mu/4 sum_ij (d_i v_j + d_j v_i)^2"),
    "diffusion": Regularizer("diffusion", ("weight",), diffusion_energy, "diffusion, weight * sum_ak (d_a v_k)^2"),
    "bending": Regularizer("bending", ("weight",), bending_energy,
                           "bending energy, weight * sum_k sum_ab (d_a d_b v_k)^2"),
}


def get_regularizer(name: str) -> Regularizer:
    """The entry of :data:`REGULARIZERS` called ``name`` (ValueError naming the choices otherwise)."""
    try:
        return REGULARIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"regularizer must be one of {tuple(REGULARIZERS)}, got {name!r}") from None
