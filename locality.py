#!/usr/bin/env python
"""Measure how locally a spatially adaptive model's per-class parameters act (locality and leakage per class).

    python locality.py --spatial-model runs/demo/spatial --dataset phantom --data-root runs/demo/data --split val

Writes OUT/locality.csv and OUT/config.json. A thin front of hypermorph_spatially_adaptive.stages.locality
(installed as hypermorph-locality).
"""
import sys

from hypermorph_spatially_adaptive.stages.locality import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
