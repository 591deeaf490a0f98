#!/usr/bin/env python
"""Register pairs with the identified parameters and compare global, tissue-population and tissue-subject methods.

    python inference.py --dataset phantom --data-root data/phantom --split test \
        --model runs/demo/spatial/checkpoints/best.pt --global-model runs/demo/global/checkpoints/best.pt \
        --parameters runs/demo/identification/parameters.csv --out runs/demo/inference
    python inference.py --fixed F.nii.gz --moving M.nii.gz [--fixed-labels FL.nii.gz --moving-labels ML.nii.gz] \
        [--fixed-keypoints F.csv --moving-keypoints M.csv] --model ... --global-model ... --parameters ... --out DIR
    python inference.py ... --methods tissue_population literature --literature-values 0.3 0.2

Writes OUT/<method>/{warped,warped_labels,disp,jacdet}_<fixed>_<moving>.nii.gz, OUT/metrics.csv, OUT/summary.md,
OUT/summary.csv and OUT/figures/ (see hypermorph_spatially_adaptive/inference.py).
"""
import sys

from hypermorph_spatially_adaptive.stages.inference import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
