"""The study's presets (data, training budget, seeds) and the spatial-model variants it compares.

Settings were chosen on the development seed 0 (the demo's phantom) and its validation pairs; the study reports
other seeds' test pairs only, so nothing it reports was tuned on.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEV_SEED", "PRESETS", "Variant", "VARIANTS", "METHOD_LABELS", "CONTROL", "GLOBAL"]

#: The seed whose data and validation pairs chose the settings; never part of a report.
DEV_SEED = 0

# quick: 3 seeds on 2 CPU cores in about 20 minutes (two seeds at a time); gpu: sized for one GPU.
PRESETS = {
    "quick": dict(seeds=(1, 2, 3), ndim=2, size=64, subjects=56, val=8, test=8, global_steps=2000,
                  paper_steps=1000, batch_size=4, lr=1e-3, enc_features=[16, 32, 32],
                  dec_features=[32, 32, 32, 16], hyper_layers=4, hyper_units=64, grid_step=0.1, jobs=2),
    "gpu": dict(seeds=(1, 2, 3, 4, 5), ndim=2, size=128, subjects=112, val=16, test=16, global_steps=20000,
                paper_steps=10000, batch_size=8, lr=5e-4, enc_features=[16, 32, 32, 32],
                dec_features=[32, 32, 32, 32, 32, 16, 16], hyper_layers=6, hyper_units=128, grid_step=0.1, jobs=1),
}


@dataclass(frozen=True)
class Variant:
    """How a spatial model is made: its ``conditioning``, whether it starts from the seed's global model
    (``warm_start``), the training ``steps`` (None: the preset's ``paper_steps``) and the class sampling."""

    conditioning: str
    warm_start: bool
    steps: int | None
    class_sampling: str = "independent"
    description: str = ""


VARIANTS = {
    # The paper's spatially adaptive HyperMorph, trained as the paper does: from scratch, independent sampling.
    "paper": Variant("vector", warm_start=False, steps=None,
                     description="the paper's variant: kernels from the whole per-class vector, trained from scratch "
                                 "with independent per-class sampling for the preset's spatial budget"),
    # The recommended recipe: tissue-wise kernels taken from the global model, no further training.
    "recommended": Variant("tissue", warm_start=True, steps=0,
                           description="tissue-wise kernels: the global model's hypernetwork applied per tissue "
                                       "class (each voxel convolved with its own class's kernels), no extra training"),
}

GLOBAL = "global"
CONTROL = "control"
#: Method names of the report and what they are (inference method names are mapped onto these).
METHOD_LABELS = {
    GLOBAL: "global model at the best global pair (Dice on validation pairs)",
    "tissue_population": "spatial model, per-class parameters chosen by Dice on the validation pairs",
    "tissue_subject": "spatial model, per-class parameters chosen by Dice on each test pair itself",
    CONTROL: "the spatial model at the global pair for every class",
    "oracle_identification": "oracle: per-class parameters chosen by the true EPE with the global model "
                             "(validation pairs)",
    "oracle_model": "oracle: per-class parameters chosen by the true EPE through the spatial model itself "
                    "(coordinate search on the validation pairs)",
}
