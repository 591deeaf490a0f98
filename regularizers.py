"""Regularizers of a velocity field: linear elasticity and diffusion, with voxelwise Lame parameters.

A thin front of :mod:`hypermorph_spatially_adaptive.core.regularizers` for scripts run from the repository root
(``import regularizers``); the package is the code. Fields ``[B, ndim, *S]`` in voxels, spacing in mm.
"""
from hypermorph_spatially_adaptive.core.regularizers import (DiffusionRegularizer, ElasticRegularizer, class_map,
                                                             diffusion_energy, elastic_energy,
                                                             elastic_energy_reference, forward_difference, lame_maps)

__all__ = [
    "forward_difference",
    "elastic_energy",
    "elastic_energy_reference",
    "diffusion_energy",
    "lame_maps",
    "class_map",
    "ElasticRegularizer",
    "DiffusionRegularizer",
]
