"""Instance-optimised methods of inference (``--instance-steps N``): every method's velocity refined on the pair.

For each method ``m`` of ``--methods`` (except ``elastix``) the run adds ``m+io``: starting from ``m``'s predicted
velocity (``identity``: from zero, a classical registration), :func:`~...core.instance_optimisation.optimise_velocity`
minimises the training objective on the pair with ``m``'s voxelwise Lame maps (the global pair everywhere, or the
per-class values placed by the fixed labels), then integrates. The parameters are ``m``'s own (from ``--parameters``)
or, with ``--instance-parameters FILE``, the same scope of that file: values chosen for the optimisation
(``parameter_identification.py --score-with instance``). ``identity`` takes the population scope. The time of an
``+io`` row is the network's and the optimisation's together.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...core.instance_optimisation import InstanceResult, check_levels, optimise_velocity
from ...core.regularizers import lame_maps

__all__ = ["IO_SUFFIX", "IDENTITY", "InstanceOptions", "io_method", "base_method", "with_io_methods",
           "lame_maps_of", "optimise_pair", "add_instance_args", "DEFAULT_LR", "DEFAULT_LEVELS", "DEFAULT_NCC_WINDOW"]

IO_SUFFIX = "+io"
#: The zero field: no registration, and, with ``--instance-steps``, the start of a classical registration.
IDENTITY = "identity"
#: Defaults tuned for 200 steps per level on the demo phantom's validation pairs (README, benchmarks).
DEFAULT_LR = 0.05
DEFAULT_LEVELS = (4, 2, 1)
#: NCC window (voxels of each level's grid) of the optimisation, wider than the networks' 9: a small window
#: normalises the noise of a homogeneous organ into a full-strength signal, which the optimisation then matches
#: (chosen on seed 0's validation pairs of both 2D phantom regimes: docs/STUDY.md).
DEFAULT_NCC_WINDOW = 25


@dataclass(frozen=True)
class InstanceOptions:
    """``--instance-steps`` (Adam steps per level), ``--instance-lr`` (voxels of each level's grid),
    ``--instance-levels`` (downsampling factors ending at 1) and ``--instance-ncc-window`` (odd, voxels of each
    level's grid)."""

    steps: int
    lr: float
    levels: tuple[int, ...]
    ncc_window: int = DEFAULT_NCC_WINDOW

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "InstanceOptions":
        """The options of the flags :func:`add_instance_args` added, checked (ValueError naming the flag)."""
        if args.instance_steps < 0:
            raise ValueError(f"--instance-steps must be >= 0, got {args.instance_steps}")
        if not args.instance_lr > 0:
            raise ValueError(f"--instance-lr must be positive, got {args.instance_lr}")
        try:
            levels = check_levels(args.instance_levels)
        except ValueError as error:
            raise ValueError(f"--instance-levels: {error}") from None
        window = args.instance_ncc_window
        if window < 3 or window % 2 == 0:
            raise ValueError(f"--instance-ncc-window must be an odd number >= 3 (a window centred on its voxel), "
                             f"got {window}")
        return cls(int(args.instance_steps), float(args.instance_lr), levels, int(window))


def add_instance_args(group: argparse._ArgumentGroup, steps: int, steps_help: str) -> None:
    """``--instance-steps`` (default ``steps``), ``--instance-lr``, ``--instance-levels`` and
    ``--instance-ncc-window``: the same flags in identification and inference, so that values chosen through the
    optimisation suit the ``+io`` methods."""
    group.add_argument("--instance-steps", type=int, default=steps, metavar="N", help=steps_help)
    group.add_argument("--instance-lr", type=float, default=DEFAULT_LR,
                       help="Adam's learning rate, in voxels of each level's grid")
    group.add_argument("--instance-levels", type=int, nargs="+", default=list(DEFAULT_LEVELS), metavar="F",
                       help="downsampling factors of the levels, coarse to fine, ending at 1")
    group.add_argument("--instance-ncc-window", type=int, default=DEFAULT_NCC_WINDOW, metavar="W",
                       help="NCC window of the optimisation (odd, voxels of each level's grid; the networks "
                            "train with 9)")


def io_method(method: str) -> str:
    """The optimised counterpart of ``method``: ``tissue_population`` -> ``tissue_population+io``."""
    return f"{method}{IO_SUFFIX}"


def base_method(method: str) -> str | None:
    """The method an ``+io`` method starts from, None for a method that is not optimised."""
    return method[:-len(IO_SUFFIX)] if method.endswith(IO_SUFFIX) else None


def with_io_methods(methods: Sequence[str], optimised: bool, not_optimised: Sequence[str] = ()) -> list[str]:
    """``methods`` with each one's ``+io`` counterpart after it when ``optimised`` (not for ``not_optimised``)."""
    out = []
    for method in methods:
        out.append(method)
        if optimised and method not in not_optimised:
            out.append(io_method(method))
    return out


def lame_maps_of(hyper: torch.Tensor, item: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxelwise ``lam(x)``, ``mu(x)`` ``[1, 1, *S]`` of a model input ``hyper``: ``[1, 2]`` (the global pair, the
    same at every voxel) or ``[1, 2C]`` (per class, placed by the item's fixed labels)."""
    shape = (1, 1, *item["fixed"].shape[1:])
    hyper = hyper.to(device=device, dtype=torch.float32)
    classes = hyper.shape[1] // 2
    if classes == 1:
        return hyper[0, 0].expand(shape), hyper[0, 1].expand(shape)
    if "fixed_labels" not in item:
        raise ValueError(f"pair {item['pair_id']}: per-class parameters need the fixed labels, and this pair has none")
    return lame_maps(item["fixed_labels"][None].to(device), hyper[:, :classes], hyper[:, classes:])


def optimise_pair(item: dict[str, Any], start: torch.Tensor | None, hyper: torch.Tensor, options: InstanceOptions,
                  device: torch.device, int_steps: int) -> InstanceResult:
    """Optimise one pair's velocity from ``start`` ``[1, ndim, *S]`` (voxels; None: zero) with the Lame maps of
    ``hyper`` (:func:`lame_maps_of`), with the model's ``int_steps`` and the options' NCC window."""
    lam, mu = lame_maps_of(hyper, item, device)
    return optimise_velocity(item["fixed"][None].to(device), item["moving"][None].to(device), lam, mu,
                             spacing=tuple(float(s) for s in item["spacing"]),
                             velocity=None if start is None else start.to(device), steps=options.steps,
                             lr=options.lr, levels=options.levels, int_steps=int_steps,
                             ncc_window=options.ncc_window)

