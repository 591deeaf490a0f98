"""The training objective: similarity weighted by ``1 - lam - mu`` plus the elastic (or diffusion) energy.

Parameter vectors (:mod:`.hyperparams`): elastic models take ``[B, 2C]`` (all lambdas, then all mus; C = 1 for the
global model), diffusion models ``[B, C]`` (one weight h per class, loss ``(1 - h) NCC + h * diffusion``).
The spatially adaptive model turns per-class values into voxelwise maps through the fixed image's labels.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from . import regularizers
from .hyperparams import REGULARIZERS, sample_hyperparams, similarity_weight, split_hyperparams
from .losses import ncc_loss

__all__ = ["CLASS_SAMPLING", "LossTerms", "sample_training_hyperparams", "constant_hyperparams", "registration_loss",
           "elastic_loss_terms"]


class LossTerms(NamedTuple):
    """Scalar loss terms of one step: ``total = similarity + regularization``."""

    total: torch.Tensor
    similarity: torch.Tensor
    regularization: torch.Tensor


CLASS_SAMPLING = ("independent", "mixed")


def sample_training_hyperparams(batch: int, num_classes: int, regularizer: str,
                                generator: torch.Generator | None = None, device=None,
                                class_sampling: str = "independent") -> torch.Tensor:
    """Random parameter vectors ``[B, P]`` by the constrained scheme of :func:`.hyperparams.sample_hyperparams`.

    ``independent`` draws every class on its own (the paper). ``mixed`` returns ``(1 - a) * shared + a * own``
    per sample with ``a ~ U(0, 1)``: ``shared`` is one draw for all classes, ``own`` the independent draws, so
    training also covers the nearly class-constant vectors that identification produces. Convex combinations
    stay inside the simplex ``lam + mu <= 1``.
    """
    if class_sampling not in CLASS_SAMPLING:
        raise ValueError(f"class_sampling must be one of {CLASS_SAMPLING}, got {class_sampling!r}")
    hyper = sample_hyperparams(batch, num_classes, generator=generator)
    if class_sampling == "mixed" and num_classes > 1:
        shared = sample_hyperparams(batch, 1, generator=generator).repeat_interleave(num_classes, dim=1)
        weight = torch.rand(batch, 1, generator=generator, device=hyper.device)
        hyper = (1.0 - weight) * shared + weight * hyper
    if regularizer == "diffusion":
        hyper = hyper[:, :num_classes]  # the lambda draws: U(0, 1) with end points oversampled
    return hyper if device is None else hyper.to(device)


def constant_hyperparams(values: Sequence[float], num_classes: int, batch: int = 1, device=None) -> torch.Tensor:
    """Repeat one value per parameter kind over all classes: ``(lam, mu)`` -> ``[B, 2C]``, ``(h,)`` -> ``[B, C]``."""
    columns = [float(v) for v in values for _ in range(num_classes)]
    return torch.tensor(columns, device=device).expand(batch, -1).clone()


def registration_loss(fixed: torch.Tensor, warped: torch.Tensor, velocity: torch.Tensor, hyper: torch.Tensor, *,
                      regularizer: str = "elastic", num_classes: int = 1, labels: torch.Tensor | None = None,
                      spacing: Sequence[float] | None = None, ncc_window: int = 9,
                      validate: bool = True) -> LossTerms:
    """Loss of one batch.

    fixed, warped ``[B, 1, *S]``; velocity ``[B, ndim, *S]`` (voxels); hyper ``[B, P]``. With ``num_classes > 1``
    (spatially adaptive model) ``labels`` ``[B, 1, *S]`` (int64, 0..C-1, on the fixed grid) make the parameters
    voxelwise. ``spacing`` (mm) makes the regularizer physical. Each sample is weighted by its own parameters.

    With ``validate=True`` every input is checked (images and velocity finite, parameters finite and
    non-negative, labels in ``0..C-1``), which on a GPU costs a host-device synchronisation per check. The
    training step checks its batch once on the CPU and passes ``validate=False``: then only shapes are checked.
    """
    if num_classes > 1 and labels is None:
        raise ValueError("labels [B, 1, *S] are required for a spatially adaptive model (num_classes > 1)")
    spatial = num_classes > 1
    if regularizer == "elastic":
        lam, mu = split_hyperparams(hyper, num_classes)
        if spatial:
            lam, mu = regularizers.lame_maps(labels, lam, mu, validate=validate)
        else:
            lam, mu = lam[:, 0], mu[:, 0]
        return elastic_loss_terms(fixed, warped, velocity, lam, mu, spacing=spacing, ncc_window=ncc_window,
                                  validate=validate)
    if regularizer == "diffusion":
        h = regularizers.class_map(labels, hyper, validate=validate) if spatial else hyper[:, 0]
        weight = (1.0 - h).clamp_min(0.0)
        regularization = regularizers.diffusion_energy(velocity, h, spacing=spacing, validate=validate)
    else:
        raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
    similarity = ncc_loss(fixed, warped, window=ncc_window, weight=weight, validate=validate)
    return LossTerms(similarity + regularization, similarity, regularization)


def elastic_loss_terms(fixed: torch.Tensor, warped: torch.Tensor, velocity: torch.Tensor, lam, mu, *,
                       spacing: Sequence[float] | None = None, ncc_window: int = 9,
                       validate: bool = True) -> LossTerms:
    """The elastic objective of :func:`registration_loss` with the Lame parameters given directly:
    ``(1 - lam - mu) * NCC(fixed, warped) + elastic_energy(velocity, lam, mu)``, both means over the voxels.

    ``lam``, ``mu``: floats, per-sample ``[B]`` or voxelwise maps ``[B, 1, *S]`` (:func:`.regularizers.lame_maps`);
    fixed, warped ``[B, 1, *S]``; velocity ``[B, ndim, *S]`` (voxels); ``spacing`` in mm.
    """
    weight = similarity_weight(lam, mu)
    regularization = regularizers.elastic_energy(velocity, lam, mu, spacing=spacing, validate=validate)
    similarity = ncc_loss(fixed, warped, window=ncc_window, weight=weight, validate=validate)
    return LossTerms(similarity + regularization, similarity, regularization)
