"""The command line of the identification stage (``parameter_identification.py``, ``hypermorph-identify``)."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..cli import HelpFormatter, add_data_args, add_model_arg, add_run_args, run_stage
from .choice import BACKGROUND_NOTES, BACKGROUND_POLICIES, CRITERIA
from .stage import run
from .instance_scoring import add_scoring_args

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``parameter_identification.py``."""
    parser = argparse.ArgumentParser(
        description="Score the global HyperMorph model over a (lambda, mu) grid and choose tissue- and "
                    "subject-specific parameters.\nWrites OUT/grid_scores.csv, OUT/parameters.csv, OUT/figures/, "
                    "OUT/summary.md and OUT/config.json.", formatter_class=HelpFormatter)
    add_data_args(parser, split="val")
    add_run_args(parser, out="runs/default/identification", dry_run=True)
    group = parser.add_argument_group("identification")
    add_model_arg(group, "global", "scored over the grid (train_hypermorph_global.py)")
    group.add_argument("--grid-step", type=float, default=0.1,
                       help="grid spacing of the simplex lam + mu <= 1 (0.1: 66 points); 1 / step must be whole")
    group.add_argument("--lam-values", nargs="+", default=None, metavar="V",
                       help="explicit lambda values instead of the step lattice: numbers or ranges START:STOP:STEP")
    group.add_argument("--mu-values", nargs="+", default=None, metavar="V", help="explicit mu values, as --lam-values")
    group.add_argument("--criterion", choices=CRITERIA, default="dice",
                       help="dice (per-class overlap, higher is better), tre (per-class landmark error in mm, "
                            "lower is better; classes without keypoints fall back to dice) or epe (per-class mean "
                            "end-point error in mm against the true displacement, lower is better: an oracle for "
                            "synthetic data such as the phantom, never for real data)")
    group.add_argument("--background", choices=BACKGROUND_POLICIES, default="global",
                       help="parameters of the background class (id 0); " + "; ".join(
                           f"{policy}: it {note}" for policy, note in BACKGROUND_NOTES.items()))
    group.add_argument("--background-params", type=float, nargs=2, default=[0.1, 0.1], metavar=("LAM", "MU"),
                       help="the (lam, mu) of the background class for --background fixed")
    group.add_argument("--selection-labels", default=None, metavar="DIR",
                       help="folder of label maps named like the dataset's label files (e.g. automatic "
                            "segmentations) that choose the parameters; the dataset's labels still score them "
                            "(grid_scores.csv columns dice_eval, tre_mm_eval)")
    group.add_argument("--grid-batch", type=int, default=None,
                       help="grid points per forward pass (default 16 on CUDA, 4 on the CPU, where larger batches "
                            "are slower); lower it for large 3D volumes, each point needs several hundred MB at 96^3")
    group.add_argument("--max-pairs", type=int, default=None, metavar="N", help="use the first N pairs (sorted by id)")
    group.add_argument("--figures", type=int, default=3, metavar="N",
                       help="heatmaps of the global and population scopes and of the subject scopes of the first N "
                            "pairs (0: no figures)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out: skip the pairs an interrupted run finished")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--shard", default=None, metavar="K/N",
                         help="score only sorted_pair_ids[K-1::N] (1-based K) and write grid_scores.csv")
    cluster.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                         help="combine the --out folders of all N shards into the files of a single run")
    add_scoring_args(parser)
    refine = parser.add_argument_group("refinement (beyond the paper)")
    refine.add_argument("--refine", action="store_true",
                        help="coordinate search on the population vector with the spatial model, by --criterion; "
                             "writes scope population_refined")
    add_model_arg(refine, "spatial", "that --refine tunes the vector with (train_hypermorph_spatial.py)")
    refine.add_argument("--refine-step", type=float, default=None, help="first search step (default: --grid-step)")
    refine.add_argument("--refine-sweeps", type=int, default=3, help="sweeps over the classes (a sweep without "
                                                                      "improvement halves the step)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``parameter_identification.py``; returns the process exit code."""
    return run_stage(build_parser(), run, argv, stage="identification")
