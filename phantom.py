#!/usr/bin/env python
"""Synthetic thorax phantom with a known, heterogeneous linear-elastic ground-truth deformation.

    python phantom.py --out data/phantom2d --ndim 2 --subjects 56 --size 64 --val 8 --test 8

A thin front of :mod:`hypermorph_spatially_adaptive.data.phantom` (installed as ``hypermorph-phantom``); the
package is the code.
"""
import sys

from hypermorph_spatially_adaptive.data import phantom as _phantom
from hypermorph_spatially_adaptive.data.phantom import *  # noqa: F401,F403 (its __all__, below)

__all__ = list(_phantom.__all__)

if __name__ == "__main__":
    sys.exit(main())  # noqa: F405
