"""The command line of the inference stage (``inference.py``, ``hypermorph-infer``): compare the methods of
:mod:`.pairs` on the pairs of a dataset split, or on an explicit fixed/moving pair of NIfTI files.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from ...data import nifti_io
from ..cli import HelpFormatter, add_data_args, add_model_arg, add_run_args, run_stage
from .context import OUTPUT_FORMATS
from .elastix import ElastixSettings
from .instance import add_instance_args
from .pairs import DEFAULT_METHODS, METHODS
from .stage import run

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``inference.py``."""
    parser = argparse.ArgumentParser(
        description="Register pairs with the identified regularization parameters and compare the methods.\n"
                    "Writes OUT/<method>/{warped,warped_labels,disp,jacdet}_<fixed>_<moving>.nii.gz (or "
                    "--output-format), "
                    "OUT/metrics.csv,\nOUT/summary.csv, OUT/summary.md, OUT/figures/ and OUT/config.json.",
        formatter_class=HelpFormatter)
    add_data_args(parser, split="test")
    add_run_args(parser, out="runs/default/inference", dry_run=True)
    group = parser.add_argument_group("models and parameters")
    add_model_arg(group, "spatial", "for the methods tissue_population, tissue_subject, literature and "
                  "tissue_oracle; a model with 'tissue' or 'maps' conditioning (train_hypermorph_spatial.py "
                  "--conditioning) needs the fixed labels of every pair (--fixed-labels with explicit files), the "
                  "paper's 'vector' none")
    add_model_arg(group, "global", "for the method global")
    group.add_argument("--parameters", default="runs/default/identification/parameters.csv",
                       help="parameters.csv written by parameter_identification.py")
    group.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                       help=f"methods to compare, of {', '.join(METHODS)}")
    group.add_argument("--refined", action="store_true",
                       help="use the population_refined scope instead of population when the file has it")
    group.add_argument("--literature-params", type=float, nargs="+", default=None, metavar=("LAM", "MU"),
                       help="method literature: the (lam, mu) of every class; or 2C values, lam_0..lam_{C-1} "
                            "mu_0..mu_{C-1}")
    oracle = parser.add_argument_group(
        "method tissue_oracle (an upper reference on synthetic data, never a method for real data)",
        "The spatial model at the per-class vector that minimises the end-point error against the true\n"
        "displacement on the pairs of --oracle-split (identification's --refine search by EPE from the population\n"
        "vector of --parameters), chosen once and written to OUT/oracle_parameters.csv.")
    oracle.add_argument("--oracle-split", default="val",
                        help="split of the same dataset (--data-root) whose pairs, with a true displacement, choose the "
                             "vector")
    oracle.add_argument("--oracle-max-pairs", type=int, default=None, metavar="N",
                        help="use the first N pairs of --oracle-split")
    oracle.add_argument("--oracle-step", type=float, default=0.1,
                        help="first step of the coordinate search (identification's --refine-step)")
    oracle.add_argument("--oracle-sweeps", type=int, default=3,
                        help="sweeps over the classes (identification's --refine-sweeps)")
    instance = parser.add_argument_group(
        "instance optimisation (every method gets a <method>+io counterpart)",
        "Starting from each method's velocity (identity: from zero, a classical registration), Adam minimises the\n"
        "training objective on the pair (weighted NCC + elastic energy with the method's voxelwise Lame maps),\n"
        "coarse to fine, then integrates. The defaults are tuned for --instance-steps 200.")
    add_instance_args(instance, steps=0, steps_help="Adam steps per level (0: no optimised methods)")
    instance.add_argument("--instance-methods", nargs="+", default=None, metavar="METHOD",
                          help="the methods of --methods that get a +io counterpart (default: all but elastix)")
    instance.add_argument("--instance-parameters", default=None, metavar="FILE",
                          help="parameters.csv chosen for the optimisation (parameter_identification.py "
                               "--score-with instance); default: each method's own from --parameters")
    baseline = parser.add_argument_group("method elastix (the classical baseline; pip install .[baselines])")
    baseline.add_argument("--elastix-bending-weight", type=float, default=ElastixSettings().bending_weight,
                          help="weight of the bending-energy penalty (the correlation's is 1)")
    baseline.add_argument("--elastix-iterations", type=int, default=ElastixSettings().iterations,
                          help="iterations per resolution")
    baseline.add_argument("--elastix-resolutions", type=int, default=ElastixSettings().resolutions,
                          help="resolutions of the pyramid (B-spline grid 4 voxels apart at the finest, doubling)")
    files = parser.add_argument_group("explicit files (instead of a dataset split)")
    files.add_argument("--fixed", default=None,
                       help="fixed image: NIfTI, MHA/MHD, NRRD or a DICOM series folder; the outputs live on its grid")
    files.add_argument("--moving", default=None, help="moving image (any of those formats, any grid)")
    files.add_argument("--fixed-labels", default=None,
                       help="fixed label map: places the classes' values for a 'tissue' or 'maps' spatial model "
                            "(required there), and scores Dice/HD95 with --moving-labels")
    files.add_argument("--moving-labels", default=None, help="moving label map (on the moving image's grid)")
    files.add_argument("--fixed-keypoints", default=None, help="fixed keypoints CSV (voxels, no header), for TRE")
    files.add_argument("--moving-keypoints", default=None, help="moving keypoints CSV (voxels of the moving image)")
    files.add_argument("--pair-id", default=None,
                       help="id to look up subject-specific rows (default: <fixed stem>_<moving stem>)")
    files.add_argument("--intensity", choices=("auto", *nifti_io.INTENSITY_MODES), default="auto",
                       help="scaling to [0, 1] as in training: ct window, mr percentiles, none; auto: mr for a "
                            "model trained on acdc, else ct")
    files.add_argument("--no-resample", action="store_true",
                       help="fail instead of resampling a moving image on another grid onto the fixed grid")
    evaluation = parser.add_argument_group("evaluation and outputs")
    evaluation.add_argument("--hd95", action=argparse.BooleanOptionalAction, default=True,
                            help="compute HD95 (slow for large 3D label maps)")
    evaluation.add_argument("--no-save-outputs", action="store_true",
                            help="write metrics, summary and figures only (no image volumes)")
    evaluation.add_argument("--output-format", choices=OUTPUT_FORMATS, default="nifti",
                            help="volumes as nifti (Learn2Reg: .nii.gz, fields in voxels), as mha or nrrd (fields as "
                                 "ITK displacement fields, LPS mm), or same: the fixed image's format (a DICOM "
                                 "series gives mha)")
    evaluation.add_argument("--figures", type=int, default=4, metavar="N",
                            help="panel figures of the first N pairs and the Dice chart (0: no figures)")
    evaluation.add_argument("--max-pairs", type=int, default=None, metavar="N", help="use the first N pairs")
    evaluation.add_argument("--resume", action="store_true",
                            help="skip pairs whose rows (OUT/.partial/) and outputs already exist, and reuse "
                                 "OUT/oracle_parameters.csv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inference.py``; returns the exit code (2 for bad input, nothing written)."""
    return run_stage(build_parser(), run, argv, stage="inference")
