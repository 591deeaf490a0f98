#!/usr/bin/env python
"""Identify tissue- and subject-specific Lame parameters: score the global model over a (lambda, mu) grid.

    python parameter_identification.py --dataset phantom --data-root data/phantom --split val \
        --global-model runs/demo/global --out runs/demo/identification
    python parameter_identification.py ... --shard 2/8 --out runs/demo/id_2   # then: --merge runs/demo/id_* --out ...

A thin front of hypermorph_spatially_adaptive.stages.identification (installed as hypermorph-identify).
"""
import sys

from hypermorph_spatially_adaptive.stages.identification import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
