"""elastic-hypermorph: HyperMorph conditioned on Lame parameters, with a linear-elastic regularizer.

The package is layered; a module imports only from its own layer or the ones below it:

1. :mod:`.files`, :mod:`.runtime`: atomic writes and software versions; devices, seeds, RNG states, distributed.
2. :mod:`.core`: tensor functions (checks, warping, losses, parameter vectors, regularizers, metrics, objective).
3. :mod:`.models` (hypernetwork, networks, the checkpoint format) and :mod:`.data` (datasets, phantom generator).
4. :mod:`.evaluation`: scores of a registered pair and paired statistics.
5. :mod:`.stages`: the command-line stages (training, identification, inference, demo).

This module re-exports the names most users need; the transform functions are re-exported for convenience.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless it is set) before torch starts its OpenMP runtime:
idle threads then sleep instead of spinning. Next to one other CPU-bound process on 2 cores a training run then
keeps about 26-31% of its speed instead of 18-25% (``benchmarks/bench_contention.py``); sharing cores still costs
most of it. It has no effect when torch was imported first.
"""
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .core.hyperparams import (hyperparam_names, join_hyperparams, sample_hyperparams, similarity_weight,
                               split_hyperparams, validate_hyperparams)
from .core.losses import MSE, NCC, local_ncc, mse_loss, ncc_loss
from .core.transform import SpatialTransformer, VecInt, compose, identity_grid, integrate_velocity, sample_at_points, \
    warp
from .models.hypernetwork import HyperConv, HyperNetwork, hyper_conv
from .models.networks import HyperVxmDense, PlainConv, RegistrationOutput, UNet, VxmDense

__all__ = [
    "HyperVxmDense", "VxmDense", "RegistrationOutput", "UNet", "PlainConv",
    "HyperNetwork", "HyperConv", "hyper_conv",
    "ncc_loss", "mse_loss", "local_ncc", "NCC", "MSE",
    "sample_hyperparams", "split_hyperparams", "join_hyperparams", "validate_hyperparams", "hyperparam_names",
    "similarity_weight",
    "warp", "integrate_velocity", "compose", "identity_grid", "sample_at_points", "SpatialTransformer", "VecInt",
]
