#!/usr/bin/env python
"""Train the global HyperMorph model: one random (lambda, mu) per sample, elastic (or diffusion) regularization.

    python train_hypermorph_global.py --dataset phantom --data-root data/phantom --out runs/demo/global --steps 2000
    torchrun --nproc_per_node=4 train_hypermorph_global.py ...   # DistributedDataParallel, one shard per rank

A thin front of hypermorph_spatially_adaptive.stages.training (installed as hypermorph-train-global).
"""
import sys

from hypermorph_spatially_adaptive.stages.training import main_global as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
