#!/usr/bin/env python
"""The whole pipeline on the synthetic phantom, where tissue-specific elasticity is true by construction.

    python demo.py                   # 2D phantom 64x64, about 2.5 minutes on 2 CPU cores; all under runs/demo/
    python demo.py --full            # 3D phantom 64^3 (50 subjects), sized for a GPU

A thin front of :mod:`hypermorph_spatially_adaptive.stages.demo` (installed as ``hypermorph-demo``).
"""
import sys

from hypermorph_spatially_adaptive.stages.demo.pipeline import INTEGER_SETTINGS, PRESETS, build_parser, main, run_demo

__all__ = ["PRESETS", "INTEGER_SETTINGS", "build_parser", "run_demo", "main"]

if __name__ == "__main__":
    sys.exit(main())
