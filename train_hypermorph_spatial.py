#!/usr/bin/env python
"""Train the spatially adaptive HyperMorph model: random (lambda, mu) per tissue class, voxelwise Lame maps.

    python train_hypermorph_spatial.py --dataset phantom --data-root data/phantom --out runs/demo/spatial --steps 2000
    torchrun --nproc_per_node=4 train_hypermorph_spatial.py ...   # DistributedDataParallel, one shard per rank

A thin front of hypermorph_spatially_adaptive.stages.training (installed as hypermorph-train-spatial).
"""
import sys

from hypermorph_spatially_adaptive.stages.training import main_spatial as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
