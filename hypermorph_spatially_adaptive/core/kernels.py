"""Fused autograd kernels behind the regularizers: forward differences and the elastic energy map.

Fields are ``[B, ndim, *S]`` in voxels (channel k = component along array axis k). A forward difference along
axis a is ``x[i + 1] - x[i]``, zero at the last index. These kernels trust their inputs: the public functions of
:mod:`.regularizers` check shapes and values first. :mod:`.regularizers` also holds
:func:`~.regularizers.elastic_energy_reference`, the same energy written term by term, against which the fused
op is tested.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["forward_difference", "Difference", "FusedElasticEnergy"]


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


class Difference(torch.autograd.Function):
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
        return Difference.apply(grad, ctx.dim), None


def forward_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Forward difference of ``x`` along ``dim`` (any shape): ``x[i + 1] - x[i]``, zero at the last index.

    Differentiable to any order; the output has the shape of ``x``. Units: those of ``x`` per index step.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must index one of the {x.dim()} dimensions of x (shape {tuple(x.shape)}), got {dim}")
    return Difference.apply(x, dim % x.dim())


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


class FusedElasticEnergy(torch.autograd.Function):
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
