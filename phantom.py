#!/usr/bin/env python
"""Synthetic thorax phantom with a known, heterogeneous linear-elastic ground-truth deformation.

    python phantom.py --out data/phantom2d --ndim 2 --subjects 56 --size 64 --val 8 --test 8

A thin front of :mod:`hypermorph_spatially_adaptive.data.phantom` (installed as ``hypermorph-phantom``); the
package is the code.
"""
import sys

from hypermorph_spatially_adaptive.data.phantom import (CLASS_NAMES, GENERATOR_VERSION, TISSUES,
                                                        default_max_displacement, elasticity_operator,
                                                        generate_subject, inverse_consistency, invert_displacement,
                                                        lame_from_young, load_vector, main, solve_elasticity,
                                                        split_sizes, write_dataset)

__all__ = [
    "CLASS_NAMES",
    "TISSUES",
    "GENERATOR_VERSION",
    "lame_from_young",
    "elasticity_operator",
    "load_vector",
    "solve_elasticity",
    "invert_displacement",
    "inverse_consistency",
    "default_max_displacement",
    "generate_subject",
    "split_sizes",
    "write_dataset",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
