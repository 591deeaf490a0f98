#!/usr/bin/env python
"""The whole pipeline on the synthetic phantom, where tissue-specific elasticity is true by construction.

    python demo.py                   # 2D phantom 64x64, about 2.5 minutes on 2 CPU cores; all under runs/demo/
    python demo.py --full            # 3D phantom 64^3 (50 subjects), sized for a GPU

A thin front of :mod:`hypermorph_spatially_adaptive.stages.demo.pipeline` (installed as ``hypermorph-demo``).
"""
import sys

from hypermorph_spatially_adaptive.stages.demo import pipeline as _pipeline
from hypermorph_spatially_adaptive.stages.demo.pipeline import *  # noqa: F401,F403 (its __all__, below)

__all__ = list(_pipeline.__all__)

if __name__ == "__main__":
    sys.exit(main())  # noqa: F405
