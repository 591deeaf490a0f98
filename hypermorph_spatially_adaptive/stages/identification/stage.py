"""The identification run: score every pair over the grid, choose, refine, and write the files.

A run scores the global model over the (lam, mu) grid for every pair of a split (``grid_scores.csv``), chooses
parameters per scope (``parameters.csv``), draws heatmaps (``figures/``) and writes ``summary.md`` and
``config.json`` into ``--out``; with a true displacement (EPE on the grid) also ``headroom.csv`` (:mod:`.physics`),
and on the phantom the rank agreement of the identified stiffness with the true materials in the summary. ``--shard K/N`` scores a slice of the pairs only (grid_scores.csv, config.json);
``--merge DIR...`` turns finished shards into the files of a single run. Every input is checked before anything
is written (:mod:`.context`). Per-pair results go to ``OUT/.partial/<pair_id>.csv`` as they finish, so
``--resume`` skips the pairs an interrupted run completed (a run with the same ``run.json``); the folder is removed
at the end.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from ...files import atomic_write_text
from ...runtime import seed_everything
from ..cli import write_config
from ..parameter_table import GLOBAL, POPULATION, POPULATION_REFINED, ParameterRow, write_parameters
from ..run_folder import claim_folder, record_run
from .choice import choose_parameters
from .context import StageContext, prepare, run_identity
from .dry_run import dry_run
from .figures import write_scope_figures
from .grid_scores import GridScores, merge_grid_scores, read_grid_scores, write_grid_scores
from .physics import grid_headroom, rank_lines, write_headroom
from .refinement import Refinement, refine_vector
from .instance_scoring import evaluate_pair_instance, instance_options
from .scoring import evaluate_pair
from .summary import run_summary

__all__ = ["run"]


def _evaluate(args: argparse.Namespace, ctx: StageContext, out: Path) -> GridScores:
    partial = out / ".partial"
    if not args.resume and partial.exists():
        shutil.rmtree(partial)
    parts = []
    for pair_id in tqdm(ctx.pair_ids, desc="identification", unit="pair", dynamic_ncols=True):
        path = partial / f"{pair_id}.csv"
        if args.resume and path.is_file():
            parts.append(read_grid_scores(path))
            continue
        index = ctx.index[pair_id]
        # The relabelled dataset reads the images again: a dataset has no labels-only load (its preprocessing of
        # labels follows that of the images).
        selection = ctx.selection[index] if ctx.selection is not None else None
        options = instance_options(args)
        if options is not None:
            scores = evaluate_pair_instance(ctx.dataset[index], ctx.grid, len(ctx.class_names), options, ctx.device,
                                            int_steps=ctx.model.int_steps, grid_batch=args.grid_batch or 16)
        else:
            scores = evaluate_pair(ctx.model, ctx.dataset[index], ctx.grid, len(ctx.class_names), args.grid_batch,
                                   selection)
        part = GridScores.for_pair(pair_id, ctx.grid, ctx.class_names, scores)
        write_grid_scores(path, part)
        parts.append(part)
    return merge_grid_scores(parts, ctx.pair_ids)


def _refine(args: argparse.Namespace, ctx: StageContext,
            rows: list[ParameterRow]) -> tuple[Refinement, list[ParameterRow]]:
    source = ctx.selection if ctx.selection is not None else ctx.dataset
    items = [source[ctx.index[pair_id]] for pair_id in ctx.pair_ids]
    start = sorted((r for r in rows if r.scope == POPULATION), key=lambda r: r.class_id)
    lam = torch.tensor([r.lam for r in start], dtype=torch.float64)
    mu = torch.tensor([r.mu for r in start], dtype=torch.float64)
    step = args.refine_step or (ctx.shard_options or vars(args))["grid_step"]  # a merge uses the shards' step
    result = refine_vector(ctx.spatial, items, lam, mu, step, args.criterion, args.refine_sweeps)
    refined = [ParameterRow(POPULATION_REFINED, class_id, name, float(result.lam[class_id]),
                            float(result.mu[class_id]), *result.class_score(class_id, args.criterion))
               for class_id, name in enumerate(ctx.class_names)]
    return result, refined


def _figures(args: argparse.Namespace, scores: GridScores, rows: list[ParameterRow], out: Path) -> int:
    """Heatmaps of the shared scopes and of the first ``--figures`` pairs' scopes (none with ``--figures 0``)."""
    if args.figures == 0:
        return 0
    everyone = list(range(len(scores.pair_ids)))
    count = 0
    for scope in (GLOBAL, POPULATION):
        count += len(write_scope_figures(out / "figures", scores, [r for r in rows if r.scope == scope], everyone))
    for p, pair_id in enumerate(scores.pair_ids[:args.figures]):
        count += len(write_scope_figures(out / "figures", scores, [r for r in rows if r.scope == pair_id], [p]))
    return count


def run(args: argparse.Namespace) -> Path:
    """Identify parameters as configured by ``args`` (see :func:`build_parser`); returns the output folder (or, with
    ``--dry-run``, prints the plan and writes nothing)."""
    seed_everything(args.seed)
    ctx = prepare(args)
    if args.dry_run:
        return dry_run(args, ctx)
    out = Path(args.out)
    record = run_identity(args, ctx)
    # The pairs already scored must come from the same model, data and grid; --max-pairs only says how many.
    claim_folder(out, record, (out / "parameters.csv").exists() or (out / "grid_scores.csv").exists(), args.resume,
                 args.overwrite, may_differ=("max_pairs",))
    record_run(out, record)
    scores = ctx.merged if ctx.merged is not None else _evaluate(args, ctx, out)
    write_grid_scores(out / "grid_scores.csv", scores)
    facts = {"class_names": list(ctx.class_names), "pair_ids": list(scores.pair_ids), "grid": scores.grid.tolist()}
    if ctx.shard:
        write_config(out, args, mode="shard", shard=list(ctx.shard), **facts)
        shutil.rmtree(out / ".partial")
        return out
    rows = choose_parameters(scores, args.criterion, args.background, tuple(args.background_params))
    refinement = None
    if args.refine:
        refinement, refined = _refine(args, ctx, rows)
        last_population = max(i for i, r in enumerate(rows) if r.scope == POPULATION)
        rows[last_population + 1:last_population + 1] = refined
    write_parameters(out / "parameters.csv", rows)
    _figures(args, scores, rows, out)
    closing = []
    room = grid_headroom(scores)
    if room is not None:
        write_headroom(out / "headroom.csv", room)
        closing.append("Headroom (headroom.csv; EPE at the global point minus at the class's own grid point, mm): "
                       + ", ".join(f"{r.class_name} {r.gain:.3f}" for r in room) + ".")
    if (ctx.shard_options or vars(args))["dataset"] == "phantom":
        closing += rank_lines(rows)
    summary = run_summary(args, ctx, scores, rows, refinement, closing)
    atomic_write_text(out / "summary.md", summary)
    print(summary)
    if refinement is not None:
        facts["refinement"] = {"start_score": refinement.start_score, "score": refinement.score,
                               "sweeps": refinement.sweeps, "evaluations": refinement.evaluations}
    write_config(out, args, mode="merge" if args.merge else "single", **facts)
    if (out / ".partial").exists():
        shutil.rmtree(out / ".partial")
    return out
