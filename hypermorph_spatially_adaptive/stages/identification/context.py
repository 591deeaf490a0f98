"""The resolved identification run: every input checked and loaded before the first file is written.

Three modes share it: a single run (the grid over every pair of a split), a ``--shard K/N`` run (a slice of the
pairs; grid scores only) and ``--merge DIR...`` (finished shards read back; no model run unless ``--refine``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ...models.checkpoints import resolve_checkpoint
from ...models.trained import ModelInfo, load_trained_model
from ...runtime import resolve_device
from ..cli import lam_mu, open_dataset
from ..run_folder import run_record
from .grid import parse_values, simplex_grid, value_grid
from .grid_scores import GridScores, merge_grid_scores, parse_shard, read_grid_scores, shard_pair_ids
from .scoring import default_grid_batch
from .instance_scoring import instance_options

__all__ = ["StageContext", "prepare", "run_identity"]

# Options that do not change the results (left out of run.json); the models are recorded by their files' identity.
_NOT_RECORDED = ("out", "device", "config", "resume", "figures", "grid_batch", "global_model", "spatial_model",
                 "data_scan", "dry_run", "overwrite", "max_voxels")
# Options that must agree between the shards of one --merge.
_SHARD_KEYS = ("global_model", "selection_labels", "dataset", "data_root", "split", "ndim", "image_size",
               "target_spacing", "dataset_option", "max_pairs", "grid_step", "lam_values", "mu_values")


@dataclass
class StageContext:
    """Everything a run needs, resolved and checked before the first file is written."""

    device: torch.device
    class_names: tuple[str, ...]
    pair_ids: list[str]
    grid: torch.Tensor | None = None
    dataset: Any = None
    selection: Any = None
    index: dict[str, int] | None = None
    model: torch.nn.Module | None = None
    spatial: torch.nn.Module | None = None
    shard: tuple[int, int] | None = None
    merged: GridScores | None = None
    shard_options: dict[str, Any] | None = None


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in (("--grid-batch", args.grid_batch, 1), ("--figures", args.figures, 0),
                             ("--refine-sweeps", args.refine_sweeps, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    if args.refine_step is not None and not 0 < args.refine_step <= 1:
        raise ValueError(f"--refine-step must lie in (0, 1], got {args.refine_step}")
    lam_mu(args.background_params, "--background-params")
    if args.merge and (args.shard or args.resume):
        raise ValueError("--merge combines finished shards; it takes neither --shard nor --resume")
    if args.shard and args.refine:
        raise ValueError("--refine tunes on all pairs: give it to the --merge step, not to a --shard run")
    instance_options(args)


def _grid(args: argparse.Namespace) -> torch.Tensor:
    lattice = simplex_grid(args.grid_step)
    if args.lam_values or args.mu_values:
        steps = sorted(set(lattice[:, 0].tolist()))
        lam = parse_values(args.lam_values, "--lam-values") if args.lam_values else steps
        grid = value_grid(lam, parse_values(args.mu_values, "--mu-values") if args.mu_values else steps)
    else:
        grid = lattice
    if not bool((grid != 0).any()):
        raise ValueError("the grid holds only (0, 0), which is never chosen; use a finer --grid-step or more values")
    return grid


def _relabelled(dataset: Any, folder: Path, scan: bool) -> Any:
    """``dataset`` reading its label maps from ``--selection-labels`` (same file names), every file read once
    with ``scan``."""
    try:
        relabelled = dataset.with_label_folder(folder)
        if scan:
            relabelled.scan()
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"--selection-labels {error}") from None
    return relabelled


def _load_global(args: argparse.Namespace, device: torch.device, class_names: Sequence[str]) -> torch.nn.Module:
    model, info = load_trained_model(args.global_model, expect="global", map_location=device,
                                     argument="--global-model")
    if model.nb_hyp_params != 2 or info.regularizer != "elastic":
        raise ValueError(f"--global-model {args.global_model}: a {info.regularizer} model with "
                         f"{model.nb_hyp_params} parameter(s); identification needs the elastic global model (lam, mu)")
    _check_classes("--global-model", info, class_names)
    return model


def _check_classes(flag: str, info: ModelInfo, class_names: Sequence[str]) -> None:
    # A bare model.save file of a global model records no classes; nothing to compare then.
    if info.class_names and tuple(info.class_names) != tuple(class_names):
        raise ValueError(f"{flag} {info.path}: the model was trained with classes {list(info.class_names)}, the data "
                         f"has classes {list(class_names)}")


def _load_spatial(args: argparse.Namespace, device: torch.device, class_names: Sequence[str]) -> torch.nn.Module:
    model, info = load_trained_model(args.spatial_model, expect="spatial", map_location=device,
                                     argument="--spatial-model")
    if model.nb_hyp_params != 2 * len(class_names) or info.regularizer != "elastic":
        raise ValueError(f"--spatial-model {args.spatial_model}: a {info.regularizer} model with "
                         f"{model.nb_hyp_params} parameters; --refine needs the elastic model of the data's "
                         f"{len(class_names)} classes ({2 * len(class_names)} parameters)")
    _check_classes("--spatial-model", info, class_names)
    return model


def _check_first_item(args: argparse.Namespace, ctx: StageContext) -> None:
    index = ctx.index[ctx.pair_ids[0]]
    item = ctx.dataset[index]
    if "fixed_labels" not in item:
        raise ValueError(f"--dataset {args.dataset} split {args.split!r}: pair {ctx.pair_ids[0]} has no label maps; "
                         f"tissue-specific identification needs them")
    if args.criterion == "tre" and len(item.get("fixed_keypoints", ())) == 0:
        raise ValueError(f"--criterion tre: pair {ctx.pair_ids[0]} of --dataset {args.dataset} split {args.split!r} "
                         f"has no keypoints; use --criterion dice")
    if args.criterion == "epe" and "gt_displacement" not in item:
        raise ValueError(f"--criterion epe: pair {ctx.pair_ids[0]} of --dataset {args.dataset} split {args.split!r} "
                         f"has no true displacement to measure the end-point error against (a synthetic dataset "
                         f"such as the phantom has one); use --criterion dice or tre")
    if ctx.selection is not None:
        try:
            ctx.selection[index]
        except ValueError as error:
            raise ValueError(f"--selection-labels {args.selection_labels}: {error}") from error


def _read_shards(args: argparse.Namespace) -> tuple[GridScores, dict[str, Any]]:
    parts, configs = [], []
    for folder in map(Path, args.merge):
        for name in ("grid_scores.csv", "config.json"):
            if not (folder / name).is_file():
                raise ValueError(f"--merge {folder}: {name} not found (not a finished --shard output folder)")
        config = json.loads((folder / "config.json").read_text())
        if "shard" not in config:
            raise ValueError(f"--merge {folder}: config.json was not written by a --shard run")
        if folder.resolve() == Path(args.out).resolve():
            raise ValueError(f"--out {args.out} must differ from the --merge folders")
        try:
            parts.append(read_grid_scores(folder / "grid_scores.csv"))
        except ValueError as error:
            raise ValueError(f"--merge {folder}: {error}") from error
        configs.append(config)
    reference = {key: configs[0]["options"].get(key) for key in _SHARD_KEYS}
    for folder, config in zip(args.merge[1:], configs[1:]):
        differ = [key for key in _SHARD_KEYS if config["options"].get(key) != reference[key]]
        if differ:
            raise ValueError(f"--merge {folder}: options {differ} differ from those of {args.merge[0]}")
    total = configs[0]["shard"][1]
    found = sorted(config["shard"][0] for config in configs)
    if any(config["shard"][1] != total for config in configs) or found != list(range(1, total + 1)):
        raise ValueError(f"--merge: need the shards 1..{total} of {total} exactly once, got "
                         f"{[f'{k}/{n}' for k, n in (c['shard'] for c in configs)]}")
    return merge_grid_scores(parts, [str(folder) for folder in args.merge]), reference


def prepare(args: argparse.Namespace) -> StageContext:
    """Check every option and input, load models and data; nothing is written."""
    _check_numbers(args)
    device = resolve_device(args.device)
    args.grid_batch = args.grid_batch or default_grid_batch(device)  # config.json records the value used
    if args.merge:
        merged, options = _read_shards(args)
        if args.criterion == "tre" and not bool(torch.isfinite(merged.tre_mm).any()):
            raise ValueError("--criterion tre: the shards' grid scores hold no TRE (the pairs have no keypoints)")
        if args.criterion == "epe" and not bool(torch.isfinite(merged.epe_mm).any()):
            raise ValueError("--criterion epe: the shards' grid scores hold no EPE (the pairs have no true "
                             "displacement)")
        ctx = StageContext(device, merged.class_names, list(merged.pair_ids), merged.grid, merged=merged,
                     shard_options=options)
        if not args.refine:
            return ctx
        ctx.dataset = open_dataset(args)
        missing = sorted(set(ctx.pair_ids) - set(ctx.dataset.pair_ids))
        if missing or tuple(ctx.dataset.class_names) != ctx.class_names \
                or args.selection_labels != options["selection_labels"]:
            raise ValueError(f"--refine after --merge: the data flags and --selection-labels must name the shards' "
                             f"data and labels ({options['selection_labels']}); pairs {missing} are missing or the "
                             f"classes {list(ctx.dataset.class_names)} differ from {list(ctx.class_names)}")
    else:
        ctx = StageContext(device, (), [], _grid(args), shard=parse_shard(args.shard) if args.shard else None)
        ctx.dataset = open_dataset(args)
        ctx.class_names = tuple(ctx.dataset.class_names)
        ctx.model = _load_global(args, device, ctx.class_names)
        pair_ids = sorted(ctx.dataset.pair_ids)
        if len(set(pair_ids)) != len(pair_ids):
            raise ValueError(f"--dataset {args.dataset}: pair ids are not unique")
        pair_ids = pair_ids[:args.max_pairs]
        ctx.pair_ids = shard_pair_ids(pair_ids, *ctx.shard) if ctx.shard else pair_ids
        if not ctx.pair_ids:
            raise ValueError(f"--shard {args.shard}: no pairs for this shard ({len(pair_ids)} pairs in all)")
    ctx.index = {pair_id: i for i, pair_id in enumerate(ctx.dataset.pair_ids)}
    if args.selection_labels:
        ctx.selection = _relabelled(ctx.dataset, Path(args.selection_labels), args.data_scan)
    _check_first_item(args, ctx)
    if args.refine:
        ctx.spatial = _load_spatial(args, device, ctx.class_names)
    return ctx


def run_identity(args: argparse.Namespace, ctx: StageContext) -> dict[str, Any]:
    """What ``run.json`` records of an identification run, and a resumed run must match: every option that changes
    its results (paths resolved) and the identity of the models it runs."""
    options = {key: value for key, value in vars(args).items() if key not in _NOT_RECORDED}
    inputs = {"--global-model": resolve_checkpoint(args.global_model) if ctx.model is not None else None,
              "--spatial-model": resolve_checkpoint(args.spatial_model) if ctx.spatial is not None else None}
    return run_record("identification", options, inputs, paths=("data_root", "selection_labels", "merge"))
