"""Registration evaluation metrics: overlap, surface distance, landmark error and field regularity.

A thin front of :mod:`hypermorph_spatially_adaptive.core.metrics` for scripts run from the repository root
(``import eval_metrics``); the package is the code. Distances in mm, fields in voxels on the fixed grid.
"""
from hypermorph_spatially_adaptive.core import metrics as _metrics
from hypermorph_spatially_adaptive.core.metrics import *  # noqa: F401,F403 (its __all__, below)

__all__ = list(_metrics.__all__)
