"""The identification stage behind ``parameter_identification.py``: flags, input checks, the run and its files.

A run scores the global model over the (lam, mu) grid for every pair of a split (``grid_scores.csv``), chooses
parameters per scope (``parameters.csv``), draws heatmaps (``figures/``) and writes ``summary.md`` and
``config.json`` into ``--out``. ``--shard K/N`` scores a slice of the pairs only (grid_scores.csv, config.json);
``--merge DIR...`` turns finished shards into the files of a single run. Every input is checked before anything
is written. Per-pair results go to ``OUT/.partial/<pair_id>.csv`` as they finish, so ``--resume`` skips the
pairs an interrupted run completed; the folder is removed at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from .checkpoints import ModelInfo, load_trained_model
from .cli import HelpFormatter, add_data_args, add_run_args, dataset_options, open_dataset, run_stage, write_config
from .identification import (BACKGROUND_POLICIES, CRITERIA, GridScores, choose_parameters, default_grid_batch,
                             evaluate_pair, merge_grid_scores, parse_shard, parse_values, read_grid_scores,
                             shard_pair_ids, simplex_grid, value_grid, write_grid_scores)
from .identification_figures import summary_markdown, write_scope_figures
from .parameter_table import GLOBAL, POPULATION, POPULATION_REFINED, ParameterRow, write_parameters
from .refinement import Refinement, refine_vector
from .runtime import atomic_write_json, atomic_write_text, resolve_device, seed_everything

__all__ = ["build_parser", "run", "main"]

#: How each --background policy sets the background class (id 0).
BACKGROUND_NOTES = {"global": "gets the global scope's point: background Dice is large whatever the parameters, so "
                              "choosing by it picks noise",
                    "population": "is chosen by its own score like any class",
                    "fixed": "gets --background-value"}
# Options that must agree between the shards of one --merge.
_SHARD_KEYS = ("model", "selection_labels", "dataset", "data_root", "split", "ndim", "image_size", "target_spacing",
               "dataset_option", "max_pairs", "grid_step", "lam_values", "mu_values")


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``parameter_identification.py``."""
    parser = argparse.ArgumentParser(
        description="Score the global HyperMorph model over a (lambda, mu) grid and choose tissue- and "
                    "subject-specific parameters.\nWrites OUT/grid_scores.csv, OUT/parameters.csv, OUT/figures/, "
                    "OUT/summary.md and OUT/config.json.", formatter_class=HelpFormatter)
    add_data_args(parser, split="val")
    add_run_args(parser, out="runs/default/identification")
    group = parser.add_argument_group("identification")
    group.add_argument("--model", default=None, help="global model checkpoint (train_hypermorph_global.py)")
    group.add_argument("--grid-step", type=float, default=0.1,
                       help="grid spacing of the simplex lam + mu <= 1 (0.1: 66 points); 1 / step must be whole")
    group.add_argument("--lam-values", nargs="+", default=None, metavar="V",
                       help="explicit lambda values instead of the step lattice: numbers or ranges START:STOP:STEP")
    group.add_argument("--mu-values", nargs="+", default=None, metavar="V", help="explicit mu values, as --lam-values")
    group.add_argument("--criterion", choices=CRITERIA, default="dice",
                       help="dice (per-class overlap, higher is better) or tre (per-class landmark error in mm, "
                            "lower is better; classes without keypoints fall back to dice)")
    group.add_argument("--background", choices=BACKGROUND_POLICIES, default="global",
                       help="parameters of the background class (id 0); " + "; ".join(
                           f"{policy}: it {note}" for policy, note in BACKGROUND_NOTES.items()))
    group.add_argument("--background-value", type=float, nargs=2, default=[0.1, 0.1], metavar=("LAM", "MU"),
                       help="background parameters for --background fixed")
    group.add_argument("--selection-labels", default=None, metavar="DIR",
                       help="folder of label maps named like the dataset's label files (e.g. automatic "
                            "segmentations) that choose the parameters; the dataset's labels still score them "
                            "(grid_scores.csv columns dice_eval, tre_mm_eval)")
    group.add_argument("--grid-batch", type=int, default=None,
                       help="grid points per forward pass (default 16 on CUDA, 4 on the CPU, where larger batches "
                            "are slower); lower it for large 3D volumes, each point needs several hundred MB at 96^3")
    group.add_argument("--max-pairs", type=int, default=None, help="use the first N pairs (sorted by id)")
    group.add_argument("--subject-figures", type=int, default=3, help="draw the subject scopes of the first N pairs")
    group.add_argument("--resume", action="store_true", help="skip pairs finished by an interrupted run in --out")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--shard", default=None, metavar="K/N",
                         help="score only sorted_pair_ids[K-1::N] (1-based K) and write grid_scores.csv")
    cluster.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                         help="combine the --out folders of all N shards into the files of a single run")
    refine = parser.add_argument_group("refinement (beyond the paper)")
    refine.add_argument("--refine", action="store_true",
                        help="coordinate search on the population vector with the spatial model; writes scope "
                             "population_refined")
    refine.add_argument("--spatial-model", default=None, help="spatially adaptive model checkpoint for --refine")
    refine.add_argument("--refine-step", type=float, default=None, help="first search step (default: --grid-step)")
    refine.add_argument("--refine-sweeps", type=int, default=3, help="sweeps over the classes (a sweep without "
                                                                      "improvement halves the step)")
    return parser


@dataclass
class _Plan:
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


# --------------------------------------------------------------------------------------------- checks

def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in (("--grid-batch", args.grid_batch, 1), ("--subject-figures", args.subject_figures, 0),
                             ("--refine-sweeps", args.refine_sweeps, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    if args.refine_step is not None and not 0 < args.refine_step <= 1:
        raise ValueError(f"--refine-step must lie in (0, 1], got {args.refine_step}")
    lam, mu = args.background_value
    if lam < 0 or mu < 0 or lam + mu > 1:
        raise ValueError(f"--background-value {lam} {mu}: need lam, mu >= 0 with lam + mu <= 1")
    if args.merge and (args.shard or args.resume):
        raise ValueError("--merge combines finished shards; it takes neither --shard nor --resume")
    if args.shard and args.refine:
        raise ValueError("--refine tunes on all pairs: give it to the --merge step, not to a --shard run")
    if args.refine and not args.spatial_model:
        raise ValueError("--refine needs --spatial-model (a checkpoint of train_hypermorph_spatial.py)")


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


def _relabelled(dataset: Any, folder: Path) -> Any:
    """``dataset`` reading its label maps from ``--selection-labels`` (same file names)."""
    try:
        return dataset.with_label_folder(folder)
    except ValueError as error:
        raise ValueError(f"--selection-labels {error}") from None


def _load_global(args: argparse.Namespace, device: torch.device, class_names: Sequence[str]) -> torch.nn.Module:
    if not args.model:
        raise ValueError("--model is required (the global model checkpoint, e.g. runs/NAME/global/checkpoints/best.pt)")
    model, info = load_trained_model(args.model, expect="global", map_location=device, argument="--model")
    if model.nb_hyp_params != 2 or info.regularizer != "elastic":
        raise ValueError(f"--model {args.model}: a {info.regularizer} model with {model.nb_hyp_params} parameter(s); "
                         f"identification needs the elastic global model (lam, mu)")
    _check_classes("--model", info, class_names)
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


def _check_first_item(args: argparse.Namespace, plan: _Plan) -> None:
    index = plan.index[plan.pair_ids[0]]
    item = plan.dataset[index]
    if "fixed_labels" not in item:
        raise ValueError(f"--dataset {args.dataset} split {args.split!r}: pair {plan.pair_ids[0]} has no label maps; "
                         f"tissue-specific identification needs them")
    if args.criterion == "tre" and len(item.get("fixed_keypoints", ())) == 0:
        raise ValueError(f"--criterion tre: pair {plan.pair_ids[0]} of --dataset {args.dataset} split {args.split!r} "
                         f"has no keypoints; use --criterion dice")
    if plan.selection is not None:
        try:
            plan.selection[index]
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


def _prepare(args: argparse.Namespace) -> _Plan:
    _check_numbers(args)
    device = resolve_device(args.device)
    args.grid_batch = args.grid_batch or default_grid_batch(device)  # config.json records the value used
    if args.merge:
        merged, options = _read_shards(args)
        if args.criterion == "tre" and not bool(torch.isfinite(merged.tre_mm).any()):
            raise ValueError("--criterion tre: the shards' grid scores hold no TRE (the pairs have no keypoints)")
        plan = _Plan(device, merged.class_names, list(merged.pair_ids), merged.grid, merged=merged,
                     shard_options=options)
        if not args.refine:
            return plan
        plan.dataset = open_dataset(args)
        missing = sorted(set(plan.pair_ids) - set(plan.dataset.pair_ids))
        if missing or tuple(plan.dataset.class_names) != plan.class_names \
                or args.selection_labels != options["selection_labels"]:
            raise ValueError(f"--refine after --merge: the data flags and --selection-labels must name the shards' "
                             f"data and labels ({options['selection_labels']}); pairs {missing} are missing or the "
                             f"classes {list(plan.dataset.class_names)} differ from {list(plan.class_names)}")
    else:
        plan = _Plan(device, (), [], _grid(args), shard=parse_shard(args.shard) if args.shard else None)
        plan.dataset = open_dataset(args)
        plan.class_names = tuple(plan.dataset.class_names)
        plan.model = _load_global(args, device, plan.class_names)
        pair_ids = sorted(plan.dataset.pair_ids)
        if len(set(pair_ids)) != len(pair_ids):
            raise ValueError(f"--dataset {args.dataset}: pair ids are not unique")
        pair_ids = pair_ids[:args.max_pairs]
        plan.pair_ids = shard_pair_ids(pair_ids, *plan.shard) if plan.shard else pair_ids
        if not plan.pair_ids:
            raise ValueError(f"--shard {args.shard}: no pairs for this shard ({len(pair_ids)} pairs in all)")
    plan.index = {pair_id: i for i, pair_id in enumerate(plan.dataset.pair_ids)}
    if args.selection_labels:
        plan.selection = _relabelled(plan.dataset, Path(args.selection_labels))
    _check_first_item(args, plan)
    if args.spatial_model:
        plan.spatial = _load_spatial(args, device, plan.class_names)
    if args.resume:
        _check_resume(args, plan)
    return plan


def _run_identity(args: argparse.Namespace, plan: _Plan) -> dict[str, Any]:
    """What per-pair results depend on; a resumed run must match it."""
    identity = {"model": str(Path(args.model).resolve()), "dataset": args.dataset,
                "data_root": str(Path(args.data_root).resolve()), "split": args.split,
                "dataset_options": dataset_options(args), "class_names": list(plan.class_names),
                "selection_labels": str(Path(args.selection_labels).resolve()) if args.selection_labels else None,
                "grid": plan.grid.tolist()}
    return json.loads(json.dumps(identity, default=str))


def _check_resume(args: argparse.Namespace, plan: _Plan) -> None:
    stored = Path(args.out) / ".partial" / "run.json"
    if stored.is_file() and json.loads(stored.read_text()) != _run_identity(args, plan):
        raise ValueError(f"--resume: {stored.parent} holds results of a run with other model, data, labels or grid; "
                         f"rerun without --resume to start over")


# --------------------------------------------------------------------------------------------- the run

def _evaluate(args: argparse.Namespace, plan: _Plan, out: Path) -> GridScores:
    partial = out / ".partial"
    if not args.resume and partial.exists():
        shutil.rmtree(partial)
    atomic_write_json(_run_identity(args, plan), partial / "run.json")
    parts = []
    for pair_id in tqdm(plan.pair_ids, desc="identification", unit="pair", dynamic_ncols=True):
        path = partial / f"{pair_id}.csv"
        if args.resume and path.is_file():
            parts.append(read_grid_scores(path))
            continue
        index = plan.index[pair_id]
        # The relabelled dataset reads the images again: a dataset has no labels-only load (its preprocessing of
        # labels follows that of the images).
        selection = plan.selection[index] if plan.selection is not None else None
        scores = evaluate_pair(plan.model, plan.dataset[index], plan.grid, len(plan.class_names), args.grid_batch,
                               selection)
        part = GridScores.for_pair(pair_id, plan.grid, plan.class_names, scores)
        write_grid_scores(path, part)
        parts.append(part)
    return merge_grid_scores(parts, plan.pair_ids)


def _refine(args: argparse.Namespace, plan: _Plan, rows: list[ParameterRow]) -> tuple[Refinement, list[ParameterRow]]:
    source = plan.selection if plan.selection is not None else plan.dataset
    items = [source[plan.index[pair_id]] for pair_id in plan.pair_ids]
    start = sorted((r for r in rows if r.scope == POPULATION), key=lambda r: r.class_id)
    lam = torch.tensor([r.lam for r in start], dtype=torch.float64)
    mu = torch.tensor([r.mu for r in start], dtype=torch.float64)
    step = args.refine_step or (plan.shard_options or vars(args))["grid_step"]  # a merge uses the shards' step
    result = refine_vector(plan.spatial, items, lam, mu, step, args.criterion, args.refine_sweeps)
    refined = []
    for class_id, name in enumerate(plan.class_names):
        tre = float(result.tre_mm[class_id])
        kind = "tre" if args.criterion == "tre" and not math.isnan(tre) else "dice"
        refined.append(ParameterRow(POPULATION_REFINED, class_id, name, float(result.lam[class_id]),
                                    float(result.mu[class_id]), kind, tre if kind == "tre" else
                                    float(result.dice[class_id])))
    return result, refined


def _figures(args: argparse.Namespace, scores: GridScores, rows: list[ParameterRow], out: Path) -> int:
    everyone = list(range(len(scores.pair_ids)))
    count = 0
    for scope in (GLOBAL, POPULATION):
        count += len(write_scope_figures(out / "figures", scores, [r for r in rows if r.scope == scope], everyone))
    for p, pair_id in enumerate(scores.pair_ids[:args.subject_figures]):
        count += len(write_scope_figures(out / "figures", scores, [r for r in rows if r.scope == pair_id], [p]))
    return count


def _summary(args: argparse.Namespace, plan: _Plan, scores: GridScores, rows: list[ParameterRow],
             refinement: Refinement | None) -> str:
    options = plan.shard_options or vars(args)
    chose = f"`{options['selection_labels']}` (--selection-labels)" if options["selection_labels"] else \
        "the dataset's labels"
    source = f"merged from shards {', '.join(f'`{d}`' for d in args.merge)}" if args.merge else "one run"
    notes = [
        f"Global model: `{options['model']}`; scores {source}",
        f"Data: {options['dataset']} `{options['data_root']}`, split `{options['split']}`: "
        f"{len(scores.pair_ids)} pairs",
        f"Grid: {scores.grid.shape[0]} (lam, mu) points with lam + mu <= 1; (0, 0) is evaluated but never chosen",
        f"Criterion: {args.criterion} ({'higher' if args.criterion == 'dice' else 'lower, in mm,'} is better); "
        f"classes without keypoints fall back to dice",
        f"Background class (--background {args.background}): it {BACKGROUND_NOTES[args.background]}",
        f"Labels that chose: {chose}",
        "Labels that scored: the dataset's labels" + (" (grid_scores.csv columns dice_eval, tre_mm_eval; last "
                                                       "column below)" if "dice_eval" in scores.metrics else ""),
    ]
    closing = [f"Subject-specific scopes: {len(scores.pair_ids)} (one per pair id) in parameters.csv."]
    if refinement is not None:
        closing.append(f"Refinement (--refine with `{args.spatial_model}`, objective {args.criterion} over the "
                       f"{len(scores.pair_ids)} tuning pairs, choosing labels): start {refinement.start_score:.4f} -> "
                       f"refined {refinement.score:.4f} ({refinement.score - refinement.start_score:+.4f}) after "
                       f"{refinement.sweeps} sweep(s), {refinement.evaluations} vectors evaluated.")
    return summary_markdown(scores, rows, notes, closing)


def run(args: argparse.Namespace) -> Path:
    """Identify parameters as configured by ``args`` (see :func:`build_parser`); returns the output folder."""
    seed_everything(args.seed)
    plan = _prepare(args)
    out = Path(args.out)
    scores = plan.merged if plan.merged is not None else _evaluate(args, plan, out)
    write_grid_scores(out / "grid_scores.csv", scores)
    facts = {"class_names": list(plan.class_names), "pair_ids": list(scores.pair_ids), "grid": scores.grid.tolist()}
    if plan.shard:
        write_config(out, args, mode="shard", shard=list(plan.shard), **facts)
        shutil.rmtree(out / ".partial")
        return out
    rows = choose_parameters(scores, args.criterion, args.background, tuple(args.background_value))
    refinement = None
    if args.refine:
        refinement, refined = _refine(args, plan, rows)
        last_population = max(i for i, r in enumerate(rows) if r.scope == POPULATION)
        rows[last_population + 1:last_population + 1] = refined
    write_parameters(out / "parameters.csv", rows)
    _figures(args, scores, rows, out)
    summary = _summary(args, plan, scores, rows, refinement)
    atomic_write_text(out / "summary.md", summary)
    print(summary)
    if refinement is not None:
        facts["refinement"] = {"start_score": refinement.start_score, "score": refinement.score,
                               "sweeps": refinement.sweeps, "evaluations": refinement.evaluations}
    write_config(out, args, mode="merge" if args.merge else "single", **facts)
    if (out / ".partial").exists():
        shutil.rmtree(out / ".partial")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``parameter_identification.py``; returns the process exit code."""
    return run_stage(build_parser(), run, argv)
