"""The training loop behind both training scripts.

One loop serves both models: the global model samples one ``(lam, mu)`` per sample, the spatially adaptive one a
pair per tissue class that the fixed labels turn into voxelwise maps. Runs are resumable (weights, optimizer, step
and RNG states in ``checkpoints/last.pt``; data order and parameter draws are functions of the seed and the step),
checkpoints are atomic, and ``torchrun`` launches DistributedDataParallel with one data shard per rank.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ...core.hyperparams import params_per_class
from ...core.objective import constant_hyperparams, sample_training_hyperparams
from ...data.registry import collate_pairs
from ...evaluation.locality import measure_locality
from ...evaluation.pair_metrics import nanmean, pair_metrics
from ...files import atomic_write_json
from ...models.checkpoints import (MODEL_TYPES, RUN_CHECKPOINT, read_checkpoint, resolve_checkpoint,
                                  save_checkpoint, training_checkpoint)
from ...runtime import DistributedContext, rng_state, set_rng_state
from ..cli import error_message, write_config
from ..run_folder import claim_folder, record_run, run_record
from .context import StageContext, common_spacing, prepare, run_info
from .curves import CURVES_FILE, TENSORBOARD_FOLDER, log_scalars, open_tensorboard, write_curves
from .dry_run import dry_run
from .step import LossOptions, check_batch, training_network, training_step

__all__ = ["MODEL_TYPES", "LR_SCHEDULES", "LOG_COLUMNS", "TrainingError", "scheduled_lr", "log_columns",
           "validate", "run_identity", "train"]

#: Columns of every ``train_log.csv``; a spatial model's log adds ``val_locality_<class>`` and
#: ``val_leakage_<class>`` per foreground class (:func:`log_columns`).
LOG_COLUMNS = ("step", "epoch", "loss", "similarity", "regularization", "val_dice", "val_tre_mm",
               "val_folding_percent", "time_s")
LR_SCHEDULES = ("constant", "cosine")
# Options that do not change the trained weights (left out of run.json): where and how fast it runs, how often it
# writes; --init-from is recorded by its file's identity.
_NOT_RECORDED = ("out", "device", "config", "resume", "workers", "checkpoint_every", "log_every", "init_from",
                 "data_scan", "dry_run", "tensorboard", "overwrite", "max_voxels")


def scheduled_lr(base: float, schedule: str, step: int, total_steps: int) -> float:
    """Learning rate of (0-based) ``step``; a function of the step alone, so a resumed run continues it."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return 0.5 * base * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    raise ValueError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says why and where the last good state is."""


class _ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, so a resumed run sees the same batches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])


def _checkpoint(ctx: StageContext, optimizer: torch.optim.Optimizer, step: int, epoch: int, best: float) -> dict:
    return training_checkpoint(ctx.model, run_info(ctx), optimizer.state_dict(), step, epoch, best, rng_state())


def _validation_hyper(ctx: StageContext) -> torch.Tensor:
    one_value = params_per_class(ctx.args.regularizer) == 1
    values = (ctx.args.val_weight,) if one_value else tuple(ctx.args.val_params)
    return constant_hyperparams(values, ctx.num_classes, device=ctx.device)


def log_columns(ctx: StageContext) -> tuple[str, ...]:
    """The columns of this run's ``train_log.csv``: :data:`LOG_COLUMNS`, and for a spatial model the locality and
    leakage of every foreground class (measured at each validation)."""
    if ctx.num_classes < 2:
        return LOG_COLUMNS
    foreground = ctx.class_names[1:]
    extra = [f"val_locality_{name}" for name in foreground] + [f"val_leakage_{name}" for name in foreground]
    return LOG_COLUMNS[:-1] + tuple(extra) + LOG_COLUMNS[-1:]


@torch.no_grad()
def validate(ctx: StageContext) -> dict[str, float]:
    """Mean Dice (foreground), TRE (mm) and folding (%) over the validation pairs at the fixed parameters, as
    ``val_dice``, ``val_tre_mm``, ``val_folding_percent``; a spatial model adds its locality and leakage per class
    (:func:`~...evaluation.locality.measure_locality`, labels from ``--label-source``)."""
    ctx.model.eval()
    hyper = _validation_hyper(ctx)
    limit = ctx.args.val_max_pairs
    items = [ctx.val_set[index] for index in range(len(ctx.val_set) if limit is None else min(limit, len(ctx.val_set)))]
    label_key = f"{getattr(ctx.args, 'label_source', 'fixed')}_labels"
    scores = []
    for item in items:
        moving, fixed = item["moving"][None].to(ctx.device), item["fixed"][None].to(ctx.device)
        labels = item[label_key][None].to(ctx.device) if ctx.num_classes > 1 else None
        output = ctx.model(moving, fixed, hyper, labels)
        scores.append(pair_metrics(output.displacement, item, ctx.class_names))
    result = {f"val_{name}": nanmean([s[key] for s in scores])
              for name, key in (("dice", "dice_mean"), ("tre_mm", "tre_mm"), ("folding_percent", "folding_percent"))}
    if ctx.num_classes > 1:
        located = [{**item, "fixed_labels": item[label_key]} for item in items]
        result.update(measure_locality(ctx.model, located, ctx.class_names).columns("val_"))
    ctx.model.train()
    return result


class _TrainLog:
    """Append-only ``train_log.csv``; on resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None, columns: Sequence[str]):
        self.path, self.columns = path, tuple(columns)
        if resume_step is not None and path.exists():
            with path.open(newline="") as handle:
                try:
                    rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
                except (KeyError, TypeError, ValueError) as error:
                    raise ValueError(f"--resume: {path} is damaged ({error!r}); move it away to resume without "
                                     f"the earlier rows") from None
            self._rewrite(rows)
        elif not path.exists() or resume_step is None:
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, **row: Any) -> None:
        try:
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, self.columns).writerow(
                    {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})
        except OSError as error:  # a failed write of an open file names no file
            raise OSError(error.errno, error.strerror, str(self.path)) from None


def _validate_and_keep_best(ctx: StageContext, optimizer: torch.optim.Optimizer, step: int, epoch: int, best: float,
                            row: dict[str, Any], progress: tqdm) -> float:
    """Validate, add the scores to the log ``row``, write ``best.pt`` when the score improves; the best score."""
    scores = validate(ctx)
    row.update(scores)
    locality = [value for key, value in scores.items() if key.startswith("val_locality_")]
    progress.write(f"step {step}: val Dice {scores['val_dice']:.4f}, TRE {scores['val_tre_mm']:.3f} mm, folding "
                   f"{scores['val_folding_percent']:.3f}%"
                   + (f", locality {min(locality):.2f}-{max(locality):.2f}" if locality else ""))
    # Higher Dice is better; without labels fall back to lower TRE.
    score = scores["val_dice"] if not math.isnan(scores["val_dice"]) else -scores["val_tre_mm"]
    if not math.isnan(score) and score > best:
        best = score
        save_checkpoint(_checkpoint(ctx, optimizer, step, epoch, best), ctx.out / "checkpoints" / "best.pt")
    return best


def _load_resume(ctx: StageContext, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    path = ctx.out / RUN_CHECKPOINT
    if not path.is_file():
        raise ValueError(f"--resume: {path} not found (--resume continues the run in --out)")
    try:
        # On the CPU: RNG states must stay there; the optimizer moves its state to the parameters' device.
        state = read_checkpoint(path, map_location="cpu")
    except ValueError as error:
        raise ValueError(f"--resume {error}") from None
    missing = [key for key in ("optimizer_state", "step", "rng") if key not in state]
    if missing:
        raise ValueError(f"--resume {path}: a model file without the training state {missing} (written by "
                         f"model.save, not by training), so the run cannot continue from it")
    stored = state["model_config"]
    if stored != ctx.model.config:
        raise ValueError(f"--resume {path}: the checkpoint's model ({stored}) differs from the options given "
                         f"({ctx.model.config})")
    ctx.model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    set_rng_state(state["rng"])
    return int(state["step"]), float(state.get("best_score", -math.inf))


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _replica_divergence(model: torch.nn.Module, distributed: DistributedContext) -> float:
    """Largest absolute difference of any weight between ranks (0 when the replicas are in sync)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    high, low = flat.clone(), flat.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return float((high - low).abs().max())


def run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What ``run.json`` records of a training run: every option that changes the weights, the data root resolved,
    and the identity of the ``--init-from`` checkpoint."""
    options = {key: value for key, value in vars(args).items() if key not in _NOT_RECORDED}
    init_from = getattr(args, "init_from", None)
    return run_record("training", options, {"--init-from": resolve_checkpoint(init_from) if init_from else None},
                      paths=("data_root",))


def _may_differ(args: argparse.Namespace) -> tuple[str, ...]:
    """Options a resumed run may change: the length of a run at a constant learning rate (a longer run continues
    it exactly); a cosine schedule is a function of --steps, so there the length is fixed."""
    return ("steps", "epochs") if args.lr_schedule == "constant" else ()


def _kept(last_checkpoint: Path) -> str:
    return (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint.is_file()
            else "no checkpoint was written yet")


@contextlib.contextmanager
def _stops_on_write_errors(last_checkpoint: Path) -> Iterator[None]:
    """A file that cannot be written (a full disk) stops training, naming it and the last good checkpoint."""
    try:
        yield
    except OSError as error:
        raise TrainingError(f"training stopped, {_kept(last_checkpoint)}: {error_message(error)}") from None


def _batches(loader: DataLoader, last_checkpoint: Path) -> Iterator[dict[str, Any]]:
    """The batches of ``loader``; a data file that fails to load (scan disabled) stops training, naming it."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ValueError, OSError) as error:
            raise TrainingError(f"training stopped, {_kept(last_checkpoint)}: {error_message(error)}") from None
        yield batch


def train(args: argparse.Namespace) -> Path:
    """Train one model as configured by ``args`` (see :func:`build_parser`); returns the run folder (or, with
    ``--dry-run``, prints the plan and writes nothing)."""
    ctx = prepare(args)
    if args.dry_run:
        return dry_run(ctx)
    distributed, device = ctx.distributed, ctx.device
    checkpoints = ctx.out / "checkpoints"
    record = run_identity(args)
    if distributed.is_main:
        claim_folder(ctx.out, record, (checkpoints / "last.pt").exists(), args.resume, args.overwrite,
                     may_differ=_may_differ(args))
    # The fused kernel updates all parameters in one pass; the hypernetwork has many small tensors.
    optimizer = torch.optim.Adam(ctx.model.parameters(), lr=args.lr, fused=ctx.device.type in ("cpu", "cuda"))
    start_step, best = (_load_resume(ctx, optimizer) if args.resume else (0, -math.inf))
    if args.steps is not None and start_step > args.steps:
        raise ValueError(f"--steps {args.steps}: {ctx.out / RUN_CHECKPOINT} is at step {start_step} already; a "
                         f"resumed run can only be as long or longer (give --steps {start_step} or more)")
    with _stops_on_write_errors(checkpoints / "last.pt"):
        return _train_from(ctx, optimizer, record, start_step, best)


def _train_from(ctx: StageContext, optimizer: torch.optim.Optimizer, identity: dict[str, Any], start_step: int,
                best: float) -> Path:
    """The run of :func:`train` once its folder is claimed and the resumed state loaded: train from
    ``start_step``, log, validate and write the checkpoints; returns the run folder."""
    args, distributed, device = ctx.args, ctx.distributed, ctx.device
    checkpoints = ctx.out / "checkpoints"
    if distributed.is_main:
        record_run(ctx.out, identity)  # also removes the temporary files of a killed run's writes
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_config(ctx.out, args, **{k: v for k, v in run_info(ctx).items() if k != "options"})
    log = (_TrainLog(ctx.out / "train_log.csv", start_step if args.resume else None, log_columns(ctx))
           if distributed.is_main else None)
    board = open_tensorboard(ctx.out / TENSORBOARD_FOLDER) if args.tensorboard and distributed.is_main else None

    def record(row: dict[str, Any]) -> None:
        log.append(**row, time_s=time.perf_counter() - started)
        if board is not None:
            log_scalars(board, row)

    def checkpoint(step: int, epoch: int) -> None:
        save_checkpoint(_checkpoint(ctx, optimizer, step, epoch, best), checkpoints / "last.pt")
        write_curves(log.path, ctx.out / CURVES_FILE)

    sampler = _ResumableSampler(ctx.train_set, num_replicas=distributed.world_size, rank=distributed.rank,
                                shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(ctx.train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=collate_pairs, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=False)
    steps_per_epoch = len(loader)
    total_steps = args.steps if args.steps is not None else args.epochs * steps_per_epoch
    network = training_network(ctx.model, distributed, device)
    generator = torch.Generator(device="cpu")
    options = LossOptions(args.regularizer, ctx.num_classes, f"{getattr(args, 'label_source', 'fixed')}_labels",
                          args.ncc_window)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda")

    step, started = start_step, time.perf_counter()
    progress = tqdm(total=total_steps, initial=start_step, desc=f"train {args.model_type}",
                    disable=not distributed.is_main, dynamic_ncols=True)
    ctx.model.train()
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        sampler.skip = offset * args.batch_size
        for batch in _batches(loader, checkpoints / "last.pt"):
            # Checked once, on the CPU: the step itself reads no device data but its loss values.
            spacing = common_spacing(batch["spacing"], f"--dataset {args.dataset}")
            check_batch(batch, options)
            batch = _batch_to(batch, device)
            # Parameter draws depend only on (seed, step, rank): a resumed run draws the same ones.
            generator.manual_seed((args.seed * 1_000_003 + step) * 4096 + distributed.rank)
            hyper = sample_training_hyperparams(batch["fixed"].shape[0], ctx.num_classes, args.regularizer,
                                                generator=generator, device=device,
                                                class_sampling=getattr(args, "class_sampling", "independent"))
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(args.lr, args.lr_schedule, step, total_steps)
            loss_value, similarity, regularization = training_step(network, optimizer, batch, hyper, spacing,
                                                                   options, autocast)
            if not math.isfinite(loss_value):
                progress.close()
                raise TrainingError(
                    f"loss became {loss_value} at step {step + 1} (similarity {similarity:.4g}, "
                    f"regularization {regularization:.4g}); training stopped, {_kept(checkpoints / 'last.pt')} (try "
                    f"a lower --lr or check the data)")
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", sim=f"{similarity:.4f}", reg=f"{regularization:.4g}")
            last = step == total_steps
            row = {}
            if distributed.is_main and (step % args.log_every == 0 or last):
                row = dict(step=step, epoch=epoch, loss=loss_value, similarity=similarity,
                           regularization=regularization)
            if distributed.is_main and ctx.val_set is not None and (step % args.val_every == 0 or last):
                row.update(step=step, epoch=epoch)
                best = _validate_and_keep_best(ctx, optimizer, step, epoch, best, row, progress)
            if row:
                record(row)
            if distributed.is_main and (step % args.checkpoint_every == 0 or last):
                checkpoint(step, epoch)
            if last:
                break
    progress.close()
    if total_steps == 0 and distributed.is_main:
        # --steps 0 (with --init-from): the warm-started model is the result, validated once.
        row = dict(step=0, epoch=0)
        if ctx.val_set is not None:
            best = _validate_and_keep_best(ctx, optimizer, 0, 0, best, row, progress)
        record(row)
        checkpoint(0, 0)
    if board is not None:
        board.close()
    if distributed.enabled:
        divergence = _replica_divergence(ctx.model, distributed)
        if distributed.is_main:
            atomic_write_json({"world_size": distributed.world_size, "max_abs_weight_difference": divergence},
                              ctx.out / "replicas.json")
        distributed.barrier()
        torch.distributed.destroy_process_group()
    if distributed.is_main and not (checkpoints / "best.pt").exists():
        # No validation split: the final weights are the best we know.
        save_checkpoint(_checkpoint(ctx, optimizer, step, step // steps_per_epoch, best), checkpoints / "best.pt")
    return ctx.out
