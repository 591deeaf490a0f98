"""The command line of the training stage (``train_hypermorph_global.py``, ``train_hypermorph_spatial.py``,
``hypermorph-train-global``, ``hypermorph-train-spatial``): its flags and entry points."""
from __future__ import annotations

import argparse
from typing import Sequence

from ...core.hyperparams import REGULARIZERS
from ...core.objective import CLASS_SAMPLING
from ...models.conditioning import CONDITIONINGS
from ..cli import HelpFormatter, add_data_args, add_run_args, run_stage
from .stage import LR_SCHEDULES, MODEL_TYPES, TrainingError, train

__all__ = ["build_parser", "main", "main_global", "main_spatial"]


def build_parser(model_type: str) -> argparse.ArgumentParser:
    """Flags of a training script (``model_type`` is ``global`` or ``spatial``)."""
    what = ("one global (lambda, mu) pair per sample" if model_type == "global"
            else "one (lambda, mu) pair per tissue class, voxelwise through the fixed labels")
    parser = argparse.ArgumentParser(
        description=f"Train the {model_type} HyperMorph model: random regularization parameters, {what}.\n"
                    f"Writes OUT/config.json, OUT/checkpoints/{{last,best}}.pt, OUT/train_log.csv and "
                    f"OUT/train_curves.png.",
        formatter_class=HelpFormatter)
    add_data_args(parser, split="train")
    add_run_args(parser, out=f"runs/default/{model_type}", dry_run=True)
    group = parser.add_argument_group("training")
    group.add_argument("--regularizer", choices=tuple(REGULARIZERS), default="elastic",
                       help="; ".join(f"{r.name}: {r.summary} (values {', '.join(r.values)})"
                                      for r in REGULARIZERS.values()))
    group.add_argument("--epochs", type=int, default=100, help="passes over the training split")
    group.add_argument("--steps", type=int, default=None,
                       help="total optimisation steps (overrides --epochs); 0 with --init-from writes the warm-started "
                            "model without training it")
    group.add_argument("--batch-size", type=int, default=1)
    group.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                       help="constant, or cosine decay from --lr to 0 over --steps (a steadier final model; keep "
                            "--steps when resuming)")
    group.add_argument("--ncc-window", type=int, default=9, help="local NCC window (voxels per axis)")
    group.add_argument("--int-steps", type=int, default=7, help="scaling-and-squaring steps (0: no integration)")
    group.add_argument("--enc-features", type=int, nargs="+", default=[16, 32, 32, 32])
    group.add_argument("--dec-features", type=int, nargs="+", default=[32, 32, 32, 32, 32, 16, 16])
    group.add_argument("--hyper-layers", type=int, default=6, help="hypernetwork MLP depth")
    group.add_argument("--hyper-units", type=int, default=128, help="hypernetwork MLP width")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoints/last.pt (weights, optimizer, step, RNG)")
    group.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    group.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    group.add_argument("--checkpoint-every", type=int, default=500, help="steps between last.pt writes")
    group.add_argument("--log-every", type=int, default=10, help="steps between train_log.csv rows")
    group.add_argument("--tensorboard", action="store_true",
                       help="also write the log rows as TensorBoard events into OUT/tensorboard/ (needs the "
                            "tensorboard package: pip install 'elastic-hypermorph[tensorboard]')")
    if model_type == "spatial":
        group.add_argument("--label-source", choices=("fixed", "moving"), default="fixed",
                           help="labels that build the voxelwise Lame maps (the field lives on the fixed grid)")
        group.add_argument("--conditioning", choices=CONDITIONINGS, default="tissue",
                           help="how the per-class values reach their voxels: tissue (each voxel convolved with "
                                "kernels generated from its own class's values; needs the fixed labels, also at "
                                "inference), maps (the paper's network plus the voxelwise lam/mu maps as input "
                                "channels; needs the labels) or vector (the paper: kernels from the whole vector, "
                                "shared by every voxel)")
        group.add_argument("--class-sampling", choices=CLASS_SAMPLING, default="independent",
                           help="independent: each class's parameters drawn on its own (the paper); mixed: a random "
                                "blend of one shared draw and the independent ones, so nearly class-constant "
                                "vectors are trained too")
        group.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                           help="start from a trained global elastic model, a checkpoint or a training run folder "
                                "(its widths replace the width flags): class-constant parameters then reproduce it "
                                "exactly; with --conditioning tissue every tissue starts with the global model's "
                                "kernels for its own values")
    val = parser.add_argument_group("validation")
    val.add_argument("--val-split", default=None,
                     help="split for validation, 'none' to skip (default: 'val', skipped with a notice when the "
                          "dataset has no validation pairs; a split given explicitly must exist)")
    val.add_argument("--val-every", type=int, default=500, help="steps between validations (and at the end)")
    val.add_argument("--val-max-pairs", type=int, default=None, metavar="N",
                     help="use at most this many validation pairs")
    val.add_argument("--val-params", type=float, nargs=2, default=[0.1, 0.1], metavar=("LAM", "MU"),
                     help="the (lam, mu) of every class at which the elastic model is validated")
    val.add_argument("--val-weight", type=float, default=0.2, help="fixed weight for validation with a regularizer of one value per class (diffusion)")
    parser.set_defaults(model_type=model_type)
    return parser


def main(model_type: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of the training scripts; returns the process exit code."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    return run_stage(build_parser(model_type), train, argv, errors=(ValueError, TrainingError), stage="training")


def main_global(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``train_hypermorph_global.py`` and ``hypermorph-train-global``."""
    return main("global", argv)


def main_spatial(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``train_hypermorph_spatial.py`` and ``hypermorph-train-spatial``."""
    return main("spatial", argv)
