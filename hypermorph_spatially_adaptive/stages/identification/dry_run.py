"""``--dry-run`` of the identification stage: the resolved run, one measured grid chunk of the first pair, and the
plan; no file."""
from __future__ import annotations

import argparse
import math

import torch

from ..plan import Plan, count_parameters, measure
from .context import StageContext
from .scoring import evaluate_pair

__all__ = ["dry_run"]


def dry_run(args: argparse.Namespace, ctx: StageContext) -> str:
    """Print the plan of the identification run ``ctx`` after timing a few passes of one grid chunk (``--grid-batch``
    points) on the first pair; return the dry run's result."""
    mode = "merge of finished shards" if args.merge else (f"shard {ctx.shard[0]}/{ctx.shard[1]}" if ctx.shard
                                                          else "single run")
    plan = Plan(f"parameter identification ({mode})")
    grid_points = int(ctx.grid.shape[0])
    plan.add("pairs", f"{len(ctx.pair_ids)} ({', '.join(ctx.pair_ids[:5])}{' ...' if len(ctx.pair_ids) > 5 else ''}); "
                      f"classes {list(ctx.class_names)}")
    plan.add("grid", f"{grid_points} (lam, mu) points, {args.grid_batch} per forward pass; criterion {args.criterion}")
    plan.add("device", str(ctx.device) + (f" ({torch.get_num_threads()} threads)" if ctx.device.type == "cpu" else ""))
    if ctx.model is not None:
        index = ctx.index[ctx.pair_ids[0]]
        item = ctx.dataset[index]
        selection = ctx.selection[index] if ctx.selection is not None else None
        chunk = ctx.grid[:args.grid_batch]
        measured = measure(lambda: evaluate_pair(ctx.model, item, chunk, len(ctx.class_names), args.grid_batch,
                                                 selection), ctx.device)
        shape = "x".join(str(n) for n in item["fixed"].shape[1:])
        plan.add("model", f"global, {count_parameters(ctx.model):,} parameters; images {shape}")
        chunks = math.ceil(grid_points / args.grid_batch) * len(ctx.pair_ids)
        plan.add_measurement("grid chunk", measured, chunks, "chunk")
    if args.refine:
        plan.add("refinement", f"coordinate search with {args.spatial_model}, up to {args.refine_sweeps} sweeps "
                               f"(not timed)")
    written = "grid_scores.csv, config.json" if ctx.shard else \
        "grid_scores.csv, parameters.csv, figures/, summary.md, config.json"
    plan.add("would write", f"{args.out}/: {written}")
    return plan.print()
