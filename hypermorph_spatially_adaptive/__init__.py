"""elastic-hypermorph: HyperMorph conditioned on Lame parameters, with a linear-elastic regularizer.

Public names of the model package; the transform functions are re-exported here for convenience.
"""
from .hypernetwork import HyperConv, HyperNetwork, hyper_conv
from .hyperparams import (hyperparam_names, join_hyperparams, sample_hyperparams, similarity_weight,
                          split_hyperparams, validate_hyperparams)
from .losses import MSE, NCC, local_ncc, mse_loss, ncc_loss
from .networks import HyperVxmDense, PlainConv, RegistrationOutput, UNet, VxmDense
from .transform import SpatialTransformer, VecInt, compose, identity_grid, integrate_velocity, sample_at_points, warp

__all__ = [
    "HyperVxmDense", "VxmDense", "RegistrationOutput", "UNet", "PlainConv",
    "HyperNetwork", "HyperConv", "hyper_conv",
    "ncc_loss", "mse_loss", "local_ncc", "NCC", "MSE",
    "sample_hyperparams", "split_hyperparams", "join_hyperparams", "validate_hyperparams", "hyperparam_names",
    "similarity_weight",
    "warp", "integrate_velocity", "compose", "identity_grid", "sample_at_points", "SpatialTransformer", "VecInt",
]
