"""The training objective: similarity weighted by ``1 - sum(values)`` plus the regularizer's energy.

Parameter vectors (:mod:`.hyperparams`) hold a regularizer's values per class (:data:`.regularizers.REGULARIZERS`):
elastic models take ``[B, 2C]`` (all lambdas, then all mus; C = 1 for the global model, loss
``(1 - lam - mu) NCC + elastic``), one-value regularizers ``[B, C]`` (loss ``(1 - h) NCC + energy(h)``). The
spatially adaptive model turns per-class values into voxelwise maps through the fixed image's labels.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from . import regularizers
from .hyperparams import sample_hyperparams
from .losses import ncc_loss

__all__ = ["CLASS_SAMPLING", "LossTerms", "sample_training_hyperparams", "constant_hyperparams", "registration_loss",
           "loss_terms"]


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
    if regularizers.get_regularizer(regularizer).values_per_class == 1:
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
    entry = regularizers.get_regularizer(regularizer)
    expected = entry.values_per_class * num_classes
    if hyper.dim() != 2 or hyper.shape[1] != expected:
        raise ValueError(f"hyper must have shape [B, {expected}] (the {regularizer} values {entry.values} of "
                         f"{num_classes} class(es), each value for all classes in turn), got {tuple(hyper.shape)}")
    values = hyper.split(num_classes, dim=1)  # one [B, C] per value
    if num_classes > 1:
        values = regularizers.class_maps(labels, *values, names=entry.values, validate=validate)
    else:
        values = tuple(v[:, 0] for v in values)
    return loss_terms(fixed, warped, velocity, regularizer, *values, spacing=spacing, ncc_window=ncc_window,
                      validate=validate)


def loss_terms(fixed: torch.Tensor, warped: torch.Tensor, velocity: torch.Tensor, regularizer: str, *values,
               spacing: Sequence[float] | None = None, ncc_window: int = 9, validate: bool = True) -> LossTerms:
    """The objective of :func:`registration_loss` with the regularizer's values given directly:
    ``(1 - sum(values)) * NCC(fixed, warped) + energy(velocity, *values)``, both means over the voxels.

    ``values``: the regularizer's values in table order (elastic: ``lam, mu``), each a float, per-sample ``[B]``
    or a voxelwise map ``[B, 1, *S]`` (:func:`.regularizers.class_maps`); fixed, warped ``[B, 1, *S]``; velocity
    ``[B, ndim, *S]`` (voxels); ``spacing`` in mm.
    """
    entry = regularizers.get_regularizer(regularizer)
    if len(values) != entry.values_per_class:
        raise ValueError(f"the {regularizer} regularizer takes the values {entry.values}, got {len(values)} value(s)")
    regularization = entry.energy(velocity, *values, spacing=spacing, validate=validate)
    similarity = ncc_loss(fixed, warped, window=ncc_window, weight=entry.similarity_weight(*values),
                          validate=validate)
    return LossTerms(similarity + regularization, similarity, regularization)
