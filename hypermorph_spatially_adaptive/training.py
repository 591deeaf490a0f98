"""The training engine behind ``train_hypermorph_global.py`` and ``train_hypermorph_spatial.py``.

One loop serves both models: the global model samples one ``(lam, mu)`` per sample, the spatially adaptive one a
pair per tissue class that the fixed labels turn into voxelwise maps. Runs are resumable (weights, optimizer, step
and RNG states in ``checkpoints/last.pt``; data order and parameter draws are functions of the seed and the step),
checkpoints are atomic, and ``torchrun`` launches DistributedDataParallel with one data shard per rank.
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import datasets

from .cli import HelpFormatter, add_data_args, add_run_args, open_dataset, run_stage, write_config
from .evaluation import nanmean, pair_metrics
from .checkpoints import load_trained_model
from .networks import FORMAT, HyperVxmDense, read_checkpoint, spatial_from_global
from .objective import CLASS_SAMPLING, REGULARIZERS, constant_hyperparams, nb_hyp_params, registration_loss, \
    sample_training_hyperparams
from .runtime import DistributedContext, atomic_torch_save, atomic_write_json, init_distributed, resolve_device, \
    rng_state, seed_everything, set_rng_state

__all__ = ["MODEL_TYPES", "LR_SCHEDULES", "TrainingError", "build_parser", "train", "main", "scheduled_lr", "LOG_COLUMNS"]

MODEL_TYPES = ("global", "spatial")
LOG_COLUMNS = ("step", "epoch", "loss", "similarity", "regularization", "val_dice", "val_tre_mm",
               "val_folding_percent", "time_s")


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(base: float, schedule: str, step: int, total_steps: int) -> float:
    """Learning rate of (0-based) ``step``; a function of the step alone, so a resumed run continues it."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return 0.5 * base * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    raise ValueError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says why and where the last good state is."""


def build_parser(model_type: str) -> argparse.ArgumentParser:
    """Flags of a training script (``model_type`` is ``global`` or ``spatial``)."""
    what = ("one global (lambda, mu) pair per sample" if model_type == "global"
            else "one (lambda, mu) pair per tissue class, voxelwise through the fixed labels")
    parser = argparse.ArgumentParser(
        description=f"Train the {model_type} HyperMorph model: random regularization parameters, {what}.\n"
                    f"Writes OUT/config.json, OUT/checkpoints/{{last,best}}.pt and OUT/train_log.csv.",
        formatter_class=HelpFormatter)
    add_data_args(parser, split="train")
    add_run_args(parser, out=f"runs/default/{model_type}")
    group = parser.add_argument_group("training")
    group.add_argument("--regularizer", choices=REGULARIZERS, default="elastic",
                       help="elastic (lambda, mu) or the diffusion baseline (one weight h)")
    group.add_argument("--epochs", type=int, default=100, help="passes over the training split")
    group.add_argument("--steps", type=int, default=None, help="total optimisation steps (overrides --epochs)")
    group.add_argument("--batch-size", type=int, default=1)
    group.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                       help="constant, or cosine decay from --lr to 0 over --steps (a steadier final model; keep --steps when resuming)")
    group.add_argument("--ncc-window", type=int, default=9, help="local NCC window (voxels per axis)")
    group.add_argument("--int-steps", type=int, default=7, help="scaling-and-squaring steps (0: no integration)")
    group.add_argument("--enc-features", type=int, nargs="+", default=[16, 32, 32, 32])
    group.add_argument("--dec-features", type=int, nargs="+", default=[32, 32, 32, 32, 32, 16, 16])
    group.add_argument("--hyper-layers", type=int, default=6, help="hypernetwork MLP depth")
    group.add_argument("--hyper-units", type=int, default=128, help="hypernetwork MLP width")
    group.add_argument("--resume", nargs="?", const="last", default=None, metavar="CHECKPOINT",
                       help="continue from OUT/checkpoints/last.pt (or the given checkpoint)")
    group.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    group.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    group.add_argument("--checkpoint-every", type=int, default=500, help="steps between last.pt writes")
    group.add_argument("--log-every", type=int, default=10, help="steps between train_log.csv rows")
    if model_type == "spatial":
        group.add_argument("--label-source", choices=("fixed", "moving"), default="fixed",
                           help="labels that build the voxelwise Lame maps (the field lives on the fixed grid)")
        group.add_argument("--class-sampling", choices=CLASS_SAMPLING, default="independent",
                           help="independent: each class's parameters drawn on its own (the paper); mixed: a random "
                                "blend of one shared draw and the independent ones, so nearly class-constant "
                                "vectors are trained too")
        group.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                           help="start from a trained global elastic model (its widths replace the width flags): "
                                "class-constant parameters then reproduce it exactly")
    val = parser.add_argument_group("validation")
    val.add_argument("--val-split", default="val", help="split for validation ('none' to skip)")
    val.add_argument("--val-every", type=int, default=500, help="steps between validations (and at the end)")
    val.add_argument("--val-pairs", type=int, default=None, help="use at most this many validation pairs")
    val.add_argument("--val-lam", type=float, default=0.1, help="fixed lambda for validation (every class)")
    val.add_argument("--val-mu", type=float, default=0.1, help="fixed mu for validation (every class)")
    val.add_argument("--val-weight", type=float, default=0.2, help="fixed diffusion weight h for validation")
    parser.set_defaults(model_type=model_type)
    return parser


@dataclass
class _Run:
    """Everything the loop needs, resolved and validated before the first step."""

    args: argparse.Namespace
    out: Path
    device: torch.device
    context: DistributedContext
    train_set: Any
    val_set: Any
    class_names: tuple[str, ...]
    num_classes: int
    spacing: tuple[float, ...]
    model: HyperVxmDense


class _ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, so a resumed run sees the same batches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])


def _check_options(args: argparse.Namespace) -> None:
    positive = {"--batch-size": args.batch_size, "--lr": args.lr, "--epochs": args.epochs,
                "--ncc-window": args.ncc_window, "--checkpoint-every": args.checkpoint_every,
                "--log-every": args.log_every, "--val-every": args.val_every}
    if args.steps is not None:
        positive["--steps"] = args.steps
    for flag, value in positive.items():
        if not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.workers < 0 or args.int_steps < 0:
        raise ValueError("--workers and --int-steps must be >= 0")
    if not (0 <= args.val_lam and 0 <= args.val_mu and args.val_lam + args.val_mu <= 1 and 0 <= args.val_weight <= 1):
        raise ValueError("--val-lam, --val-mu must be >= 0 with a sum <= 1, and --val-weight in [0, 1]")


def _common_spacing(item_spacings: Sequence[torch.Tensor], what: str) -> tuple[float, ...]:
    first = tuple(float(s) for s in item_spacings[0])
    for spacing in item_spacings[1:]:
        if not torch.allclose(torch.as_tensor(spacing, dtype=torch.float64), torch.tensor(first, dtype=torch.float64)):
            raise ValueError(f"{what}: pairs have different voxel spacings ({first} vs {tuple(spacing.tolist())}); "
                             f"resample them with --target-spacing")
    return first


def _prepare(args: argparse.Namespace) -> _Run:
    _check_options(args)
    device = resolve_device(args.device)
    context, device = init_distributed(device)
    train_set = open_dataset(args)
    if args.batch_size * context.world_size > len(train_set):
        raise ValueError(f"--batch-size {args.batch_size} x {context.world_size} process(es) is larger than the "
                         f"{args.split!r} split ({len(train_set)} pairs)")
    val_set = None
    if args.val_split != "none":
        try:
            val_set = open_dataset(args, args.val_split)
        except ValueError as error:
            if "no pairs" not in str(error).lower() and "split" not in str(error).lower():
                raise
            tqdm.write(f"validation disabled: {error}")
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
        model = _warm_start(args, num_classes)
    else:
        model = HyperVxmDense(inshape, nb_hyp_params(args.regularizer, num_classes),
                              enc_features=tuple(args.enc_features), dec_features=tuple(args.dec_features),
                              int_steps=args.int_steps, hyper_layers=args.hyper_layers,
                              hyper_units=args.hyper_units)
    return _Run(args, Path(args.out), device, context, train_set, val_set, class_names, num_classes, spacing,
                model.to(device))


def _warm_start(args: argparse.Namespace, num_classes: int) -> HyperVxmDense:
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
    return spatial_from_global(global_model, num_classes)


def _checkpoint(run: _Run, optimizer: torch.optim.Optimizer, step: int, epoch: int, best: float) -> dict:
    return {"format": FORMAT, "model_config": run.model.config, "model_state": run.model.state_dict(),
            "config": _run_info(run), "optimizer_state": optimizer.state_dict(), "step": step, "epoch": epoch,
            "best_score": best, "rng": rng_state()}


def _run_info(run: _Run) -> dict[str, Any]:
    """What later stages need to know about the model, stored in config.json and every checkpoint."""
    return {"options": vars(run.args).copy(), "model_type": run.args.model_type,
            "regularizer": run.args.regularizer, "class_names": list(run.class_names),
            "num_classes": run.num_classes, "dataset": run.args.dataset, "spacing": list(run.spacing),
            "inshape": list(run.model.config["inshape"]), "ncc_window": run.args.ncc_window}


def _validation_hyper(run: _Run) -> torch.Tensor:
    values = (run.args.val_weight,) if run.args.regularizer == "diffusion" else (run.args.val_lam, run.args.val_mu)
    return constant_hyperparams(values, run.num_classes, device=run.device)


@torch.no_grad()
def validate(run: _Run) -> dict[str, float]:
    """Mean Dice (foreground), TRE (mm) and folding (%) over the validation pairs at the fixed parameters."""
    run.model.eval()
    hyper = _validation_hyper(run)
    pairs = range(len(run.val_set)) if run.args.val_pairs is None else range(min(run.args.val_pairs, len(run.val_set)))
    scores = []
    for index in pairs:
        item = run.val_set[index]
        moving, fixed = item["moving"][None].to(run.device), item["fixed"][None].to(run.device)
        output = run.model(moving, fixed, hyper)
        scores.append(pair_metrics(output.displacement, item, run.class_names))
    run.model.train()
    return {key: nanmean([s[key] for s in scores]) for key in ("dice_mean", "tre_mm", "folding_percent")}


class _TrainLog:
    """Append-only ``train_log.csv``; on resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            with path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
            self._rewrite(rows)
        elif not path.exists() or resume_step is None:
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, **row: Any) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, LOG_COLUMNS).writerow(
                {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})


def _load_resume(run: _Run, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    path = run.out / "checkpoints" / "last.pt" if run.args.resume == "last" else Path(run.args.resume)
    if not path.is_file():
        raise ValueError(f"--resume: checkpoint {path} not found")
    try:
        # On the CPU: RNG states must stay there; the optimizer moves its state to the parameters' device.
        state = read_checkpoint(path, map_location="cpu")
    except ValueError as error:
        raise ValueError(f"--resume {error}") from None
    if "upgraded_from" in state:
        raise ValueError(f"--resume {path}: a {state['upgraded_from']} checkpoint cannot be resumed (its optimizer "
                         f"state has the old kernel-head layout); its weights load everywhere else")
    if state.get("model_config") != run.model.config:
        raise ValueError(f"--resume {path}: the checkpoint's model ({state.get('model_config')}) differs from the "
                         f"options given ({run.model.config})")
    run.model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    set_rng_state(state["rng"])
    return int(state["step"]), float(state.get("best_score", -math.inf))


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _replica_divergence(model: torch.nn.Module, context: DistributedContext) -> float:
    """Largest absolute difference of any weight between ranks (0 when the replicas are in sync)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    high, low = flat.clone(), flat.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return float((high - low).abs().max())


def train(args: argparse.Namespace) -> Path:
    """Train one model as configured by ``args`` (see :func:`build_parser`); returns the run folder."""
    run = _prepare(args)
    context, device = run.context, run.device
    checkpoints = run.out / "checkpoints"
    if context.is_main:
        if args.resume is None and (checkpoints / "last.pt").exists():
            raise ValueError(f"--out {run.out} already holds a run; pass --resume to continue it or choose another --out")
        checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink()
    # The fused kernel updates all parameters in one pass; the hypernetwork has many small tensors.
    optimizer = torch.optim.Adam(run.model.parameters(), lr=args.lr, fused=run.device.type in ("cpu", "cuda"))
    start_step, best = (_load_resume(run, optimizer) if args.resume else (0, -math.inf))
    if context.is_main:
        write_config(run.out, args, **{k: v for k, v in _run_info(run).items() if k != "options"})
    log = _TrainLog(run.out / "train_log.csv", start_step if args.resume else None) if context.is_main else None

    sampler = _ResumableSampler(run.train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                                seed=args.seed, drop_last=True)
    loader = DataLoader(run.train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=datasets.collate_pairs, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=False)
    steps_per_epoch = len(loader)
    total_steps = args.steps if args.steps is not None else args.epochs * steps_per_epoch
    network = (DistributedDataParallel(run.model, device_ids=[device] if device.type == "cuda" else None)
               if context.enabled else run.model)
    generator = torch.Generator(device="cpu")
    label_key = f"{getattr(args, 'label_source', 'fixed')}_labels"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda")

    step, started = start_step, time.perf_counter()
    progress = tqdm(total=total_steps, initial=start_step, desc=f"train {args.model_type}", disable=not context.is_main,
                    dynamic_ncols=True)
    run.model.train()
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        sampler.skip = offset * args.batch_size
        for batch in loader:
            spacing = _common_spacing(batch["spacing"], f"--dataset {args.dataset}")  # on the CPU: no device sync
            batch = _batch_to(batch, device)
            # Parameter draws depend only on (seed, step, rank): a resumed run draws the same ones.
            generator.manual_seed((args.seed * 1_000_003 + step) * 4096 + context.rank)
            hyper = sample_training_hyperparams(batch["fixed"].shape[0], run.num_classes, args.regularizer,
                                                generator=generator, device=device,
                                                class_sampling=getattr(args, "class_sampling", "independent"))
            with autocast:
                output = network(batch["moving"], batch["fixed"], hyper)
            terms = registration_loss(batch["fixed"], output.warped.float(), output.velocity.float(), hyper,
                                      regularizer=args.regularizer, num_classes=run.num_classes,
                                      labels=batch.get(label_key), spacing=spacing, ncc_window=args.ncc_window)
            loss_value, similarity, regularization = torch.stack(list(terms)).tolist()  # one device sync
            if not math.isfinite(loss_value):
                progress.close()
                raise TrainingError(
                    f"loss became {loss_value} at step {step + 1} (similarity {similarity:.4g}, "
                    f"regularization {regularization:.4g}); training stopped. The last good checkpoint "
                    f"is {checkpoints / 'last.pt'} (try a lower --lr or check the data)")
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(args.lr, args.lr_schedule, step, total_steps)
            optimizer.step()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", sim=f"{similarity:.4f}", reg=f"{regularization:.4g}")
            last = step == total_steps
            row = {}
            if context.is_main and (step % args.log_every == 0 or last):
                row = dict(step=step, epoch=epoch, loss=loss_value, similarity=similarity,
                           regularization=regularization)
            if context.is_main and run.val_set is not None and (step % args.val_every == 0 or last):
                scores = validate(run)
                row.update(step=step, epoch=epoch, val_dice=scores["dice_mean"], val_tre_mm=scores["tre_mm"],
                           val_folding_percent=scores["folding_percent"])
                progress.write(f"step {step}: val Dice {scores['dice_mean']:.4f}, TRE {scores['tre_mm']:.3f} mm, "
                               f"folding {scores['folding_percent']:.3f}%")
                # Higher Dice is better; without labels fall back to lower TRE.
                score = scores["dice_mean"] if not math.isnan(scores["dice_mean"]) else -scores["tre_mm"]
                if not math.isnan(score) and score > best:
                    best = score
                    atomic_torch_save(_checkpoint(run, optimizer, step, epoch, best), checkpoints / "best.pt")
            if row:
                log.append(**row, time_s=time.perf_counter() - started)
            if context.is_main and (step % args.checkpoint_every == 0 or last):
                atomic_torch_save(_checkpoint(run, optimizer, step, epoch, best), checkpoints / "last.pt")
            if last:
                break
    progress.close()
    if context.enabled:
        divergence = _replica_divergence(run.model, context)
        if context.is_main:
            atomic_write_json({"world_size": context.world_size, "max_abs_weight_difference": divergence},
                              run.out / "replicas.json")
        context.barrier()
        torch.distributed.destroy_process_group()
    if context.is_main and not (checkpoints / "best.pt").exists():
        # No validation split: the final weights are the best we know.
        atomic_torch_save(_checkpoint(run, optimizer, step, step // steps_per_epoch, best), checkpoints / "best.pt")
    return run.out


def main(model_type: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of the training scripts; returns the process exit code."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    return run_stage(build_parser(model_type), train, argv, errors=(ValueError, TrainingError))
