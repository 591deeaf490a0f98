"""Regularization parameter vectors: layout, validation and the training-time sampler.

A parameter vector for C classes is ``h = [lam_0, ..., lam_{C-1}, mu_0, ..., mu_{C-1}]``, a tensor ``[B, 2C]``
(all lambdas, then all mus; class 0 = background). The global model uses C = 1, ``h = [lam, mu]``. The diffusion
baseline takes one weight per class instead, ``h = [h_0, ..., h_{C-1}]`` (:func:`nb_hyp_params`). Values lie in
[0, 1] with ``lam + mu <= 1`` per class; the similarity term is weighted by ``1 - lam - mu``. The values are
dimensionless loss weights (the network's conditioning input), not Lame parameters in kPa. How many values a
class has is its regularizer's (:data:`.regularizers.REGULARIZERS`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .regularizers import REGULARIZERS, get_regularizer

__all__ = [
    "REGULARIZERS",
    "params_per_class",
    "nb_hyp_params",
    "sample_hyperparams",
    "split_hyperparams",
    "join_hyperparams",
    "validate_hyperparams",
    "hyperparam_names",
    "similarity_weight",
]

#: Slack allowed on ``lam + mu <= 1`` and on the [0, 1] range: sums such as ``lam + (1 - lam)`` round in float32.
TOLERANCE = 1e-6


def params_per_class(regularizer: str) -> int:
    """Values per class in a parameter vector: 2 (``lam``, ``mu``) for ``elastic``, 1 for ``diffusion``."""
    return get_regularizer(regularizer).values_per_class


def nb_hyp_params(regularizer: str, num_classes: int) -> int:
    """Length P of the parameter vector: values per class times C (``2C`` for the elastic model)."""
    return params_per_class(regularizer) * _check_num_classes(num_classes)


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _with_endpoints(upper: torch.Tensor, endpoint_prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``U(0, upper)`` elementwise, replacing a fraction ``endpoint_prob`` by 0 or ``upper`` (half each)."""
    shape, device = upper.shape, upper.device
    uniform = torch.rand(shape, generator=generator, device=device) * upper
    at_endpoint = torch.rand(shape, generator=generator, device=device) < endpoint_prob
    at_upper = torch.rand(shape, generator=generator, device=device) < 0.5
    endpoint = torch.where(at_upper, upper, torch.zeros_like(upper))
    return torch.where(at_endpoint, endpoint, uniform)


def sample_hyperparams(batch: int, num_classes: int = 1, endpoint_prob: float = 0.2,
                       generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Draw training parameter vectors ``[batch, 2 * num_classes]`` (float32), independently per sample and class.

    ``lam ~ U(0, 1)``, except that with probability ``endpoint_prob`` lam is an end point, 0 or 1 with equal
    chance; then ``mu ~ U(0, 1 - lam)`` with the same end-point oversampling (end points 0 and ``1 - lam``).
    Sampling runs on the generator's device (CPU without one) and the result is moved to ``device``, so a seeded
    ``torch.Generator`` gives the same draws wherever the result goes.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    _check_num_classes(num_classes)
    if not 0.0 <= float(endpoint_prob) <= 1.0:
        raise ValueError(f"endpoint_prob must lie in [0, 1], got {endpoint_prob}")
    source = generator.device if generator is not None else torch.device("cpu")
    ones = torch.ones(batch, num_classes, device=source)
    lam = _with_endpoints(ones, endpoint_prob, generator)
    mu = _with_endpoints(1.0 - lam, endpoint_prob, generator)
    h = join_hyperparams(lam, mu)
    return h if device is None else h.to(device)


def split_hyperparams(h: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``h`` ``[B, 2C]`` into ``(lam [B, C], mu [B, C])`` (views, no range check)."""
    _check_num_classes(num_classes)
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != 2 * num_classes:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h must have shape [B, {2 * num_classes}] (all lambdas then all mus for "
                         f"{num_classes} classes), got {shape}")
    return h[:, :num_classes], h[:, num_classes:]


def join_hyperparams(lam: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_hyperparams`: ``lam``, ``mu`` ``[B, C]`` -> ``h`` ``[B, 2C]``."""
    for name, value in (("lam", lam), ("mu", mu)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must have shape [B, C], got {shape}")
    if lam.shape != mu.shape:
        raise ValueError(f"lam and mu must have the same shape [B, C], got lam {tuple(lam.shape)} "
                         f"and mu {tuple(mu.shape)}")
    return torch.cat([lam, mu], dim=1)


def validate_hyperparams(h: torch.Tensor, num_classes: int, name: str = "hyper") -> torch.Tensor:
    """Check ``h`` ``[B, 2C]``: finite, every value in [0, 1] and ``lam + mu <= 1`` per class; return it."""
    _check_num_classes(num_classes)
    expected = 2 * num_classes
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != expected:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"{name} must have shape [B, {expected}] ({num_classes} lambdas then {num_classes} mus), "
                         f"got {shape}")
    if not h.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {h.dtype}")
    if not torch.isfinite(h).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (h < -TOLERANCE).any() or (h > 1 + TOLERANCE).any():
        raise ValueError(f"{name} values must lie in [0, 1], got min {h.min().item():.6g}, max {h.max().item():.6g}")
    lam, mu = split_hyperparams(h, num_classes)
    total = lam + mu
    if (total > 1 + TOLERANCE).any():
        raise ValueError(f"{name} must satisfy lam + mu <= 1 for every class, got a maximum of "
                         f"{total.max().item():.6g}")
    return h


def hyperparam_names(class_names: Sequence[str]) -> list[str]:
    """Column names in vector order: ``["lam_<name>", ..., "mu_<name>", ...]``."""
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names must hold at least one class name, got an empty sequence")
    return [f"lam_{n}" for n in names] + [f"mu_{n}" for n in names]


def similarity_weight(lam, mu):
    """Weight of the similarity term, ``1 - lam - mu`` (any shapes that broadcast; floats give a float).

    Clamped at 0 so that a valid pair whose sum rounds to slightly above 1 gives weight 0, not a tiny negative.
    """
    if isinstance(lam, torch.Tensor) or isinstance(mu, torch.Tensor):
        return (1.0 - lam - mu).clamp_min(0.0)
    return max(0.0, 1.0 - float(lam) - float(mu))
