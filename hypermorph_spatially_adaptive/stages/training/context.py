"""The resolved training run: options checked, data opened, model built, before the first step or file."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from ...core.hyperparams import nb_hyp_params
from ...data.pair_dataset import SPLITS, EmptySplitError
from ...models.networks import HyperVxmDense, spatial_from_global
from ...models.trained import load_trained_model
from ...runtime import DistributedContext, init_distributed, resolve_device, seed_everything
from ..cli import lam_mu, open_dataset
from .curves import require_tensorboard

__all__ = ["StageContext", "prepare", "run_info", "common_spacing"]


@dataclass
class StageContext:
    """Everything the training loop needs, resolved and validated before the first step or file."""

    args: argparse.Namespace
    out: Path
    device: torch.device
    distributed: DistributedContext
    train_set: Any
    val_set: Any
    class_names: tuple[str, ...]
    num_classes: int
    spacing: tuple[float, ...]
    model: HyperVxmDense


def _check_options(args: argparse.Namespace) -> None:
    positive = {"--batch-size": args.batch_size, "--lr": args.lr, "--epochs": args.epochs,
                "--ncc-window": args.ncc_window, "--checkpoint-every": args.checkpoint_every,
                "--log-every": args.log_every, "--val-every": args.val_every}
    if args.steps is not None and not (args.steps == 0 and getattr(args, "init_from", None)):
        positive["--steps"] = args.steps  # 0 only with --init-from: the warm-started model, untrained
    for flag, value in positive.items():
        if not 0 < value < math.inf:
            raise ValueError(f"{flag} must be a positive finite number, got {value}")
    if args.ncc_window % 2 == 0:
        raise ValueError(f"--ncc-window must be odd (a window centred on its voxel), got {args.ncc_window}")
    if args.workers < 0 or args.int_steps < 0:
        raise ValueError("--workers and --int-steps must be >= 0")
    if args.val_split not in (None, "none", *SPLITS):
        raise ValueError(f"--val-split must be one of {', '.join(SPLITS)} or none, got {args.val_split!r}")
    if args.val_max_pairs is not None and args.val_max_pairs < 1:
        raise ValueError(f"--val-max-pairs must be >= 1, got {args.val_max_pairs}")
    lam_mu(args.val_params, "--val-params")
    if args.tensorboard:
        require_tensorboard()
    if not 0 <= args.val_weight <= 1:
        raise ValueError(f"--val-weight must lie in [0, 1], got {args.val_weight}")


def common_spacing(item_spacings: Sequence[torch.Tensor], what: str) -> tuple[float, ...]:
    """The one voxel spacing (mm) of a batch's items; ValueError naming ``what`` when they differ."""
    first = tuple(float(s) for s in item_spacings[0])
    for spacing in item_spacings[1:]:
        if not torch.allclose(torch.as_tensor(spacing, dtype=torch.float64), torch.tensor(first, dtype=torch.float64)):
            raise ValueError(f"{what}: pairs have different voxel spacings ({first} vs {tuple(spacing.tolist())}); "
                             f"resample them with --target-spacing")
    return first


def prepare(args: argparse.Namespace) -> StageContext:
    """Check the options, open the data and build the model (nothing is written)."""
    _check_options(args)
    device = resolve_device(args.device)
    distributed, device = init_distributed(device)
    train_set = open_dataset(args)
    if args.batch_size * distributed.world_size > len(train_set):
        raise ValueError(f"--batch-size {args.batch_size} x {distributed.world_size} process(es) is larger than the "
                         f"{args.split!r} split ({len(train_set)} pairs)")
    val_set = _open_validation(args)
    first = train_set[0]
    inshape = tuple(first["fixed"].shape[1:])
    if args.image_size is not None and tuple(args.image_size) != inshape:
        raise ValueError(f"--image-size {args.image_size}: the dataset gives images of shape {list(inshape)}")
    spacing = tuple(float(s) for s in first["spacing"])
    class_names = tuple(train_set.class_names)
    num_classes = len(class_names) if args.model_type == "spatial" else 1
    if args.model_type == "spatial":
        if num_classes < 2:
            raise ValueError(f"--dataset {args.dataset}: the spatial model needs tissue labels (>= 2 classes)")
        if f"{args.label_source}_labels" not in first:
            raise ValueError(f"--dataset {args.dataset}: pairs have no {args.label_source} labels for the Lame maps")
    seed_everything(args.seed)  # same initial weights on every rank
    if getattr(args, "init_from", None):
        model = _warm_start(args, class_names)
    else:
        model = HyperVxmDense(inshape, nb_hyp_params(args.regularizer, num_classes),
                              enc_features=tuple(args.enc_features), dec_features=tuple(args.dec_features),
                              int_steps=args.int_steps, hyper_layers=args.hyper_layers,
                              hyper_units=args.hyper_units, regularizer=args.regularizer,
                              class_names=class_names,
                              conditioning=getattr(args, "conditioning", "vector"))
    return StageContext(args, Path(args.out), device, distributed, train_set, val_set, class_names, num_classes,
                        spacing, model.to(device))


def _open_validation(args: argparse.Namespace) -> Any:
    """The validation split, or None. Without ``--val-split`` it is ``val`` when the dataset has validation pairs and
    skipped with a notice when that split is empty; a split asked for (flag or config file) must exist, and any
    other problem with the data is an error. ``args.val_split`` is set to the split used or ``none``."""
    requested = args.val_split
    if requested == "none":
        return None
    split = requested or "val"
    try:
        val_set = open_dataset(args, split)
    except EmptySplitError as error:
        if requested is not None:
            raise ValueError(f"--val-split {split}: {error} (pass --val-split none to train without validation)") \
                from None
        tqdm.write(f"notice: validation disabled (no --val-split given and the dataset has no validation pairs): "
                   f"{error}")
        args.val_split = "none"
        return None
    args.val_split = split
    return val_set


def _warm_start(args: argparse.Namespace, class_names: Sequence[str]) -> HyperVxmDense:
    """The spatial model initialised from ``--init-from``; the width flags are set to the checkpoint's."""
    if args.regularizer != "elastic":
        raise ValueError("--init-from needs --regularizer elastic (it copies a global elastic model)")
    global_model, info = load_trained_model(args.init_from, expect="global", argument="--init-from")
    if info.regularizer != "elastic":
        raise ValueError(f"--init-from {args.init_from}: expected an elastic model, got {info.regularizer}")
    config = global_model.config
    args.enc_features, args.dec_features = config["enc_features"], config["dec_features"]
    args.int_steps, args.hyper_layers, args.hyper_units = (config["int_steps"], config["hyper_layers"],
                                                           config["hyper_units"])
    return spatial_from_global(global_model, len(class_names), class_names, conditioning=args.conditioning)


def run_info(ctx: StageContext) -> dict[str, Any]:
    """What later stages need to know about the model, stored in config.json and every checkpoint."""
    return {"options": vars(ctx.args).copy(), "model_type": ctx.args.model_type,
            "regularizer": ctx.args.regularizer, "class_names": list(ctx.class_names),
            "num_classes": ctx.num_classes, "dataset": ctx.args.dataset, "spacing": list(ctx.spacing),
            "inshape": list(ctx.model.config["inshape"]), "ncc_window": ctx.args.ncc_window,
            "conditioning": ctx.model.conditioning}
