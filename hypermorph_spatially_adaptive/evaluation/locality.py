"""Locality of a spatially adaptive model: does each tissue class's parameter set act where that class is?

The elastic energy penalises strain, so locality is measured on the small-strain tensor of the displacement,
``eps = sym grad u`` (mm per mm, :func:`~..core.metrics.strain_tensor`), not on ``u`` itself: a stiff bone still
moves with its neighbours, but its strain should follow its own parameters. Every pair is registered at
``C + 1`` vectors (:func:`locality_vectors`): every class at a ``base`` set, every class ``raised``, and for each
foreground class c only c raised. With ``d_c(x) = |eps_only_c(x) - eps_base(x)|`` and
``d_all(x) = |eps_all(x) - eps_base(x)|`` (Frobenius norms):

- ``locality_c = mean of d_c inside c / mean of d_all inside c``: near 1 when class c's own values do inside c
  what raising every class does there; near 1/C for a model that only sees the class mean.
- ``leakage_c = mean of d_c outside c / mean of d_c inside c``: near 0 when they do nothing elsewhere.

Means are pooled over the voxels of all pairs; "inside c" is where the fixed labels are c.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..core.metrics import strain_tensor

__all__ = ["DEFAULT_BASE", "DEFAULT_RAISED", "Locality", "locality_vectors", "LocalitySums", "locality_sums",
           "measure_locality"]

#: Default parameter sets of the measurement: ``(lam, mu)`` for elastic models (``h`` is the first value for
#: diffusion models).
DEFAULT_BASE = (0.05, 0.05)
DEFAULT_RAISED = (0.45, 0.45)


@dataclass(frozen=True)
class Locality:
    """Locality and leakage per foreground class (``class_names[1:]`` order), measured on ``pairs`` pairs."""

    class_names: tuple[str, ...]
    locality: tuple[float, ...]
    leakage: tuple[float, ...]
    pairs: int

    def columns(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}locality_<class>`` and ``{prefix}leakage_<class>`` for every foreground class."""
        out = {f"{prefix}locality_{name}": value for name, value in zip(self.class_names[1:], self.locality)}
        out.update({f"{prefix}leakage_{name}": value for name, value in zip(self.class_names[1:], self.leakage)})
        return out


def locality_vectors(num_classes: int, base: Sequence[float], raised: Sequence[float]) -> torch.Tensor:
    """The ``C + 1`` vectors of one measurement ``[C + 1, k C]`` (layout kind by kind: all lambdas, then all mus):
    row 0 every class at ``base``, row 1 every class at ``raised``, row 1 + c only class c (c = 1..C-1) raised.
    ``base`` and ``raised`` hold the ``k`` values of one class (``(lam, mu)``, or ``(h,)``)."""
    if len(base) != len(raised) or not base:
        raise ValueError(f"base and raised must hold the same number of values per class, got {base} and {raised}")
    if num_classes < 2:
        raise ValueError(f"locality needs a spatial model with >= 2 classes, got {num_classes}")
    rows = [[float(v) for v in base for _ in range(num_classes)], [float(v) for v in raised for _ in range(num_classes)]]
    for c in range(1, num_classes):
        row = list(rows[0])
        for k, value in enumerate(raised):
            row[k * num_classes + c] = float(value)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


@dataclass
class LocalitySums:
    """Voxel sums pooled over pairs, per class ``[C]`` (float64): ``only_inside`` (d_c inside c), ``all_inside``
    (d_all inside c), ``only_outside`` (d_c outside c), and the voxel counts ``inside`` and ``outside``."""

    only_inside: torch.Tensor
    all_inside: torch.Tensor
    only_outside: torch.Tensor
    inside: torch.Tensor
    outside: torch.Tensor

    def __add__(self, other: "LocalitySums") -> "LocalitySums":
        return LocalitySums(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))

    def result(self, class_names: Sequence[str], pairs: int) -> Locality:
        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else math.nan

        locality, leakage = [], []
        for c in range(1, len(class_names)):
            values = [float(t[c]) for t in vars(self).values()]
            only_in, all_in, only_out, n_in, n_out = values
            locality.append(ratio(only_in, all_in))
            leakage.append(ratio(ratio(only_out, n_out), ratio(only_in, n_in)))
        return Locality(tuple(class_names), tuple(locality), tuple(leakage), pairs)


def locality_sums(displacements: torch.Tensor, labels: torch.Tensor, spacing: Sequence[float]) -> LocalitySums:
    """The sums of one pair from its fields at the :func:`locality_vectors` ``[C + 1, ndim, *S]`` (voxels) and its
    fixed labels ``[*S]`` (values ``0..C-1``)."""
    num_classes = displacements.shape[0] - 1
    eps = strain_tensor(displacements.double(), spacing).flatten(1, 2)  # [C + 1, ndim^2, *S]
    change = (eps - eps[:1]).norm(dim=1)  # [C + 1, *S]: row 0 zero, row 1 d_all, row 1 + c d_c
    labels = labels.to(change.device)
    sums = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(5)]
    for c in range(1, num_classes):
        inside = labels == c
        only = change[1 + c]
        sums[0][c], sums[1][c] = only[inside].sum(), change[1][inside].sum()
        sums[2][c] = only[~inside].sum()
        sums[3][c], sums[4][c] = inside.sum(), (~inside).sum()
    return LocalitySums(*sums)


@torch.no_grad()
def measure_locality(model: torch.nn.Module, items: Sequence[dict[str, Any]], class_names: Sequence[str],
                     base: Sequence[float] = DEFAULT_BASE, raised: Sequence[float] = DEFAULT_RAISED) -> Locality:
    """Locality and leakage of a spatial ``model`` over dataset ``items`` (each with ``fixed``, ``moving``,
    ``fixed_labels`` ``[1, *S]`` and ``spacing``). ``base`` and ``raised`` hold one class's values (only the first
    is used for a diffusion model, which has one value per class). ``model(moving, fixed, hyper, labels)`` must
    return an object with ``displacement`` ``[K, ndim, *S]``; the C + 1 vectors of a pair run in one pass."""
    if not items:
        raise ValueError("locality needs at least one pair")
    num_classes = len(class_names)
    kinds = getattr(model, "nb_hyp_params", 2 * num_classes) // num_classes
    hyper = locality_vectors(num_classes, tuple(base)[:kinds], tuple(raised)[:kinds])
    device = next(model.parameters()).device
    hyper = hyper.to(device)
    count = hyper.shape[0]
    total = None
    for item in items:
        if "fixed_labels" not in item:
            raise ValueError(f"pair {item.get('pair_id', '?')}: locality needs the fixed labels")
        moving, fixed = (item[key][None].to(device).expand(count, *item[key].shape) for key in ("moving", "fixed"))
        labels = item["fixed_labels"][None].to(device)
        displacement = model(moving, fixed, hyper, labels).displacement
        sums = locality_sums(displacement, item["fixed_labels"][0], tuple(float(s) for s in item["spacing"]))
        total = sums if total is None else total + sums
    return total.result(class_names, len(items))
