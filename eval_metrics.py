"""Registration evaluation metrics: overlap, surface distance, landmark error and field regularity.

A thin front of :mod:`hypermorph_spatially_adaptive.core.metrics` for scripts run from the repository root
(``import eval_metrics``); the package is the code. Distances in mm, fields in voxels on the fixed grid.
"""
from hypermorph_spatially_adaptive.core.metrics import (DiceScores, determinant_folding_percent, determinant_sdlogj,
                                                        dice, folding_percent, hd95, hd95_per_class,
                                                        jacobian_determinant, sdlogj, tre, warp_image, warp_labels)

__all__ = [
    "DiceScores",
    "dice",
    "hd95",
    "hd95_per_class",
    "tre",
    "jacobian_determinant",
    "sdlogj",
    "folding_percent",
    "determinant_sdlogj",
    "determinant_folding_percent",
    "warp_labels",
    "warp_image",
]
