"""Regularizers of a velocity field: linear elasticity and diffusion, with voxelwise Lame parameters.

A thin front of :mod:`hypermorph_spatially_adaptive.core.regularizers` for scripts run from the repository root
(``import regularizers``); the package is the code. Fields ``[B, ndim, *S]`` in voxels, spacing in mm.
"""
from hypermorph_spatially_adaptive.core import regularizers as _regularizers
from hypermorph_spatially_adaptive.core.regularizers import *  # noqa: F401,F403 (its __all__, below)

__all__ = list(_regularizers.__all__)
