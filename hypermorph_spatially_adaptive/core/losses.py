"""Image similarity losses: local normalised cross-correlation and mean squared error.

Images ``[B, 1, *S]`` (2D or 3D). Each loss builds a per-voxel map ``[B, 1, *S]``, multiplies it by an optional
``weight`` (a float, one value per sample ``[B]``, or a voxelwise map ``[B, 1, *S]``; e.g. the similarity weight
``1 - lam - mu``) and by an optional ``mask``, then reduces: ``"none"`` returns the map, ``"sum"`` sums it,
``"mean"`` averages over all voxels of the batch, or, with a mask, divides the sum by the mask's sum (the mean
over masked voxels). The weight is not normalised: a weight of 0.5 halves the loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tensors import Parameter, as_voxelwise, check_image, check_reduction, reduce_loss

__all__ = ["local_ncc", "ncc_loss", "mse_loss", "NCC", "MSE"]


def _check_pair(fixed: torch.Tensor, warped: torch.Tensor, validate: bool = True) -> int:
    ndim = check_image(fixed, "fixed", channels=1, check_values=validate)
    check_image(warped, "warped", channels=1, check_values=validate)
    if fixed.shape != warped.shape:
        raise ValueError(f"fixed and warped must have the same shape [B, 1, *S], got fixed {tuple(fixed.shape)} "
                         f"and warped {tuple(warped.shape)}")
    if not fixed.is_floating_point() or not warped.is_floating_point():
        raise ValueError(f"fixed and warped must be floating-point images, got {fixed.dtype} and {warped.dtype}")
    return ndim


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd int (voxels per axis), got {window!r}")
    return window


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of ``x`` ``[B, C, *S]`` over the ``window``-wide box centred at each voxel, counting only the voxels
    inside the image. Separable (one 1D pass per axis: the in-image part of a box is a product of 1D ranges), so
    the cost per voxel grows linearly with ``window``; any image size, also smaller than the window."""
    ndim = x.dim() - 2
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    r = window // 2
    for axis in range(ndim):
        n = x.shape[2 + axis]
        kernel = [1] * ndim
        kernel[axis] = window
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis):2 * (ndim - axis)] = [r, r]  # F.pad lists the last axis first
        # Zero padding plus an explicit count: avg_pool's own padding rejects windows larger than the image.
        sums = pool(F.pad(x, pad), tuple(kernel), stride=1) * window
        centre = torch.arange(n, device=x.device)
        count = (torch.clamp(centre + r, max=n - 1) - torch.clamp(centre - r, min=0) + 1).to(x.dtype)
        x = sums / count.view([n if k == axis else 1 for k in range(ndim)])
    return x


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5, *,
              validate: bool = True) -> torch.Tensor:
    """Squared local correlation coefficient ``cc`` ``[B, 1, *S]`` in [0, 1] between two images ``[B, 1, *S]``.

    Over the ``window^ndim`` box centred at each voxel (only its part inside the image), with window means
    ``<.>``: ``cov = <IJ> - <I><J>``, ``var_I = <I^2> - <I>^2``, ``var_J`` alike, and

        ``cc = (cov + eps)^2 / ((var_I + eps) * (var_J + eps))``,

    VoxelMorph's squared NCC (``cov^2 / (var_I var_J)``, written with window means instead of sums) with
    ``eps`` (intensity^2 units, sized for intensities in [0, 1]) added to the covariance and both variances,
    as in SSIM's structure term. Consequences: an image against itself gives cc = 1 everywhere, flat windows
    included (the optimum, loss 0); a window flat in one image and textured in the other gives
    ``cc = eps / (var + eps) ~ 0`` (a mismatch, so flattening the warped image is never rewarded); a window
    flat in both gives cc = 1. ``cc <= 1`` by Cauchy-Schwarz; it is clamped to [0, 1] against rounding. Each
    image's global mean is subtracted first (cc is unchanged) to limit float32 cancellation in the variances.
    ``validate=False`` skips the finiteness checks of the images (shapes are always checked).
    """
    ndim = _check_pair(fixed, warped, validate)
    _check_window(window)
    if not float(eps) > 0:
        raise ValueError(f"eps must be positive (it keeps flat windows finite), got {eps}")
    axes = tuple(range(2, 2 + ndim))
    i = fixed - fixed.mean(dim=axes, keepdim=True)
    j = warped - warped.mean(dim=axes, keepdim=True)
    means = _box_mean(torch.cat([i, j, i * i, j * j, i * j], dim=1), window)
    m_i, m_j, m_ii, m_jj, m_ij = means.split(1, dim=1)
    cov = m_ij - m_i * m_j
    var_i = (m_ii - m_i * m_i).clamp_min(0.0)
    var_j = (m_jj - m_j * m_j).clamp_min(0.0)
    return ((cov + eps) ** 2 / ((var_i + eps) * (var_j + eps))).clamp(0.0, 1.0)


def _weight_mask_reduce(values: torch.Tensor, weight: Parameter | None, mask: torch.Tensor | None,
                        reduction: str, validate: bool = True) -> torch.Tensor:
    """Apply weight and mask to a per-voxel map ``[B, 1, *S]`` and reduce it (see the module docstring)."""
    if weight is not None:
        values = values * as_voxelwise(weight, values, "weight", check_values=validate)
    if mask is None:
        return reduce_loss(values, reduction)
    batch, spatial = values.shape[0], tuple(values.shape[2:])
    if not isinstance(mask, torch.Tensor) or mask.dim() != values.dim() or mask.shape[0] not in (1, batch) \
            or mask.shape[1] != 1 or tuple(mask.shape[2:]) != spatial:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must have shape [B={batch} or 1, 1, {', '.join(map(str, spatial))}], got {shape}")
    mask = mask.to(values.dtype)
    if validate and (not torch.isfinite(mask).all() or (mask < 0).any()):
        raise ValueError("mask must be finite and non-negative (0/1 or a soft mask)")
    values = values * mask
    if reduction != "mean":
        return reduce_loss(values, reduction)
    count = mask.expand_as(values).sum()
    # An empty mask selects nothing: the sum is 0 and so is the loss, rather than 0/0.
    return reduce_loss(values, "sum") / count.clamp_min(torch.finfo(values.dtype).tiny)


def ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, weight: Parameter | None = None,
             mask: torch.Tensor | None = None, reduction: str = "mean", eps: float = 1e-5, *,
             validate: bool = True) -> torch.Tensor:
    """Local NCC loss, per voxel ``1 - cc`` with ``cc`` from :func:`local_ncc` (0 = perfect match, at most 1).

    fixed, warped ``[B, 1, *S]``; ``window`` odd, voxels per axis; weight: float, ``[B]`` or ``[B, 1, *S]``;
    mask ``[B or 1, 1, *S]``; reduction ``"mean"`` (over masked voxels with a mask), ``"sum"`` or ``"none"``
    (the weighted, masked map ``[B, 1, *S]``). ``validate=False`` skips the checks that read the data (finite
    images, finite non-negative weight and mask), for callers that checked them once.
    """
    check_reduction(reduction)  # before the NCC map is computed
    cc = local_ncc(fixed, warped, window, eps, validate=validate)
    return _weight_mask_reduce(1.0 - cc, weight, mask, reduction, validate)


def mse_loss(fixed: torch.Tensor, warped: torch.Tensor, weight: Parameter | None = None,
             mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Squared intensity difference per voxel ``(fixed - warped)^2`` (intensity^2 units), weighted, masked, reduced
    as :func:`ncc_loss`. fixed, warped ``[B, 1, *S]``."""
    _check_pair(fixed, warped)
    check_reduction(reduction)
    return _weight_mask_reduce((fixed - warped) ** 2, weight, mask, reduction)


class NCC(nn.Module):
    """Module form of :func:`ncc_loss`: ``NCC(window, reduction, eps)(fixed, warped, weight=None, mask=None)``."""

    def __init__(self, window: int = 9, reduction: str = "mean", eps: float = 1e-5):
        super().__init__()
        self.window, self.reduction = _check_window(window), check_reduction(reduction)
        if not float(eps) > 0:
            raise ValueError(f"eps must be positive (it keeps flat windows finite), got {eps}")
        self.eps = float(eps)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor, weight: Parameter | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return ncc_loss(fixed, warped, self.window, weight, mask, self.reduction, self.eps)

    def extra_repr(self) -> str:
        return f"window={self.window}, reduction={self.reduction!r}, eps={self.eps:g}"


class MSE(nn.Module):
    """Module form of :func:`mse_loss`: ``MSE(reduction)(fixed, warped, weight=None, mask=None)``."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor, weight: Parameter | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return mse_loss(fixed, warped, weight, mask, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
