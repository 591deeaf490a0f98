"""Paired registration datasets: Learn2Reg NLST and Lung CT, ACDC cardiac MR, and the synthetic phantom.

A thin front of :mod:`hypermorph_spatially_adaptive.data` for scripts run from the repository root
(``import datasets``); the package is the code. ``get_dataset(name, root, split, **options)`` yields one dict per
pair (see :mod:`hypermorph_spatially_adaptive.data.registry`).
"""
from hypermorph_spatially_adaptive import data as _data
from hypermorph_spatially_adaptive.data import *  # noqa: F401,F403 (its __all__, below)

__all__ = list(_data.__all__)
