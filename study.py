#!/usr/bin/env python
"""Seeds x spatial-model variants on the phantom, aggregated with 95% intervals into docs/STUDY.md.

    python study.py                          # quick CPU preset: 3 seeds, about 20 minutes on 2 cores
    python study.py --preset gpu --jobs 1    # the GPU preset

A thin front of hypermorph_spatially_adaptive.stages.study (installed as hypermorph-study).
"""
import sys

from hypermorph_spatially_adaptive.stages.study import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
