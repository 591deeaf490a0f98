"""The study's presets (data, training budget, seeds) and the spatial-model variants it compares.

Settings were chosen on the development seed 0 (the demo's phantom) and its validation pairs; the study reports
other seeds' test pairs only, so nothing it reports was tuned on.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..inference.instance import DEFAULT_NCC_WINDOW

__all__ = ["DEV_SEED", "PRESETS", "REPORTS", "Regime", "Variant", "VARIANTS", "METHOD_LABELS", "IO_METHOD_LABELS",
           "CONTROL", "GLOBAL"]

#: The seed whose data and validation pairs chose the settings; never part of a report.
DEV_SEED = 0



@dataclass(frozen=True)
class Regime:
    """One testbed of the study: the phantom's ``texture`` (``rich``: textured organs, as contrast-enhanced CT;
    ``ct``: non-contrast CT, homogeneous soft tissue, fat and liver), its dimension and its size per axis."""

    texture: str
    ndim: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.texture}-{self.ndim}d-{self.size}"


_SMALL_NETWORK = dict(enc_features=[16, 32, 32], dec_features=[32, 32, 32, 16], hyper_layers=4, hyper_units=64)
# Instance optimisation in the study: its parameters are chosen through the optimisation itself on each seed's
# validation pairs (io_val_pairs, grid io_grid_step), then the test pairs are optimised from the recommended
# variant's prediction and from zero; elastix runs on the same pairs. io_ncc_window: the optimisation's NCC window.
_INSTANCE = dict(io_steps=100, io_grid_step=0.25, io_val_pairs=4, io_ncc_window=DEFAULT_NCC_WINDOW, elastix=True)

# quick: 3 seeds x 2 regimes on 2 CPU cores (two seeds at a time); gpu: sized for one GPU.
PRESETS = {
    "quick": dict(seeds=(1, 2, 3), regimes=(Regime("rich", 2, 64), Regime("ct", 2, 64)), subjects=56, val=8,
                  test=8, global_steps=2000, paper_steps=1000, batch_size=4, lr=1e-3, grid_step=0.1, jobs=2,
                  **_SMALL_NETWORK, **_INSTANCE),
    # quick-3d: a small 3D phantom (32^3) on 2 CPU cores, with a quarter of the quick preset's training steps at
    # half its batch: a first look at 3D whose models are under-trained next to the gpu preset's 64^3 regimes.
    "quick-3d": dict(seeds=(1, 2, 3), regimes=(Regime("ct", 3, 32), Regime("rich", 3, 32)), subjects=32, val=6,
                     test=6, global_steps=500, paper_steps=250, batch_size=2, lr=1e-3, grid_step=0.1, jobs=2,
                     # the networks' window 9: its report was measured before the optimisation's window was chosen
                     **_SMALL_NETWORK, **{**_INSTANCE, "io_ncc_window": 9}),
    "gpu": dict(seeds=(1, 2, 3, 4, 5), regimes=(Regime("rich", 2, 128), Regime("ct", 2, 128), Regime("rich", 3, 64),
                                                Regime("ct", 3, 64)),
                subjects=112, val=16, test=16, global_steps=20000, paper_steps=10000, batch_size=8, lr=5e-4,
                enc_features=[16, 32, 32, 32], dec_features=[32, 32, 32, 32, 32, 16, 16], hyper_layers=6,
                hyper_units=128, grid_step=0.1, jobs=1, io_steps=200, io_grid_step=0.2, io_val_pairs=8,
                io_ncc_window=DEFAULT_NCC_WINDOW, elastix=True),
}


#: Each preset's report (``study.py --report`` by default; another preset's is ``docs/STUDY_<preset>.md``).
REPORTS = {"quick": "docs/STUDY.md", "quick-3d": "docs/STUDY_3D.md", "gpu": "docs/STUDY_GPU.md"}


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
    "tissue_joint": "spatial model, per-class parameters tuned through the spatial model itself by Dice on the "
                    "validation pairs (the joint search: coordinate search from tissue_population's vector)",
    "tissue_subject": "spatial model, per-class parameters chosen by Dice on each test pair itself",
    CONTROL: "the spatial model at the global pair for every class",
    "oracle_identification": "oracle: per-class parameters chosen by the true EPE with the global model "
                             "(validation pairs)",
    "oracle_model": "oracle: per-class parameters chosen by the true EPE through the spatial model itself "
                    "(coordinate search on the validation pairs)",
}
#: The instance-optimised methods and the classical baseline (run with the recommended variant's model).
IO_METHOD_LABELS = {
    "global+io": "the global model's field optimised on the pair at the global pair chosen for the optimisation",
    "tissue_population+io": "the spatial model's field optimised on the pair with the per-class parameters chosen "
                            "for the optimisation (validation pairs)",
    "classical": "the optimisation from a zero field with those per-class parameters (no network)",
    "elastix": "elastix B-spline (multi-resolution, normalized correlation, bending penalty) on the same pairs",
}
