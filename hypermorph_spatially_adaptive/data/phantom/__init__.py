"""Synthetic thorax phantom with a known, heterogeneous linear-elastic ground-truth deformation.

``python phantom.py --out DIR --ndim 2 --subjects 10`` (or ``hypermorph-phantom``) writes a dataset in the
Learn2Reg NLST layout with prefix ``PHANTOM`` (:func:`write_dataset`). Every subject has its own anatomy, tissue
stiffness factors and breathing load; its true displacement solves the Navier-Cauchy equations with
tissue-specific Lame parameters, so tissue-specific elastic regularization is the right model of this data by
construction. The body is cut by the top and bottom of the field of view, where the zero border holds it like the
neck and pelvis would; a 2D phantom is a coronal slice, so the diaphragm motion (along the last axis) is in plane.
``--texture rich|ct`` picks the image regime (:mod:`.anatomy`): texture in every tissue, or non-contrast CT.

Modules: :mod:`.elasticity` (the finite-element physics and the inverse of a displacement), :mod:`.anatomy`
(label map, materials, rendering, keypoints), :mod:`.subject` (one subject: load, true displacement, image pair)
and :mod:`.writer` (the dataset on disk and the command line).
"""
from .anatomy import CLASS_NAMES, HU, HU_CT, RIB_DEPTH_MM, RIB_HEIGHT_MM, SPINE_RADIUS_MM, TEXTURES, TISSUES, anatomy
from .elasticity import elasticity_operator, inverse_consistency, invert_displacement, lame_from_young, load_vector, \
    solve_elasticity
from .subject import default_max_displacement, generate_subject
from .writer import GENERATOR_VERSION, main, split_sizes, write_dataset

__all__ = [
    "CLASS_NAMES",
    "TISSUES",
    "HU",
    "HU_CT",
    "TEXTURES",
    "RIB_HEIGHT_MM",
    "RIB_DEPTH_MM",
    "SPINE_RADIUS_MM",
    "anatomy",
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
