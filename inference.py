#!/usr/bin/env python
"""Register pairs with the identified parameters and compare global, tissue-population and tissue-subject methods.

    python inference.py --dataset phantom --data-root data/phantom --split test \
        --spatial-model runs/demo/spatial --global-model runs/demo/global \
        --parameters runs/demo/identification/parameters.csv --out runs/demo/inference
    python inference.py --fixed F.nii.gz --moving M.nii.gz [--fixed-labels FL.nii.gz --moving-labels ML.nii.gz] \
        [--fixed-keypoints F.csv --moving-keypoints M.csv] --spatial-model ... --global-model ... --parameters ...
    python inference.py ... --methods tissue_population literature --literature-params 0.3 0.2

A model flag takes a checkpoint or a training run folder (its checkpoints/last.pt). Writes
OUT/<method>/{warped,warped_labels,disp,jacdet}_<fixed>_<moving>.nii.gz, OUT/metrics.csv, OUT/summary.md,
OUT/summary.csv and OUT/figures/. A thin front of hypermorph_spatially_adaptive.stages.inference (installed as
hypermorph-infer).
"""
import sys

from hypermorph_spatially_adaptive.stages.inference import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
