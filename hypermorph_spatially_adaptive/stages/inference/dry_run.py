"""``--dry-run`` of the inference stage: the resolved run, a few measured registrations of the first pair, and the
plan; no file."""
from __future__ import annotations

import torch

from ..plan import Plan, count_parameters, measure
from .context import StageContext
from .pairs import NETWORK_METHODS, TISSUE_ORACLE, method_parameters, register, score_pair

__all__ = ["dry_run"]


def dry_run(ctx: StageContext) -> str:
    """Print the plan of the inference run ``ctx`` after timing each method's registration and scoring of the first
    pair; return the dry run's result."""
    args = ctx.args
    item = ctx.item(0)
    shape = "x".join(str(n) for n in item["fixed"].shape[1:])
    plan = Plan("inference")
    plan.add("pairs", f"{len(ctx.pair_ids)} ({', '.join(ctx.pair_ids[:5])}{' ...' if len(ctx.pair_ids) > 5 else ''}); "
                      f"images {shape}; classes {list(ctx.class_names)}")
    plan.add("methods", ", ".join(ctx.methods) + f"; parameters from {args.parameters} "
                                                 f"(population scope {ctx.population_scope!r})")
    for kind, (model, info) in ctx.models.items():
        plan.add(f"{kind} model", f"{info.path}: {count_parameters(model):,} parameters")
    plan.add("device", str(ctx.device) + (f" ({torch.get_num_threads()} threads)" if ctx.device.type == "cpu" else ""))
    for method in ctx.methods:
        if method not in NETWORK_METHODS:
            plan.add(method, "not timed here (no network: an optimisation or elastix per pair, seconds each)")
            continue
        if method == TISSUE_ORACLE and ctx.oracle is None:
            # Its vector is chosen by a search before the pairs are registered: time the pairs at the population's.
            plan.add(method, f"vector searched on {len(ctx.oracle_pair_ids)} pairs of --oracle-split first (not "
                             f"timed); its registrations cost as much as tissue_population's")
            continue
        hyper, source = method_parameters(method, ctx.pair_ids[0], ctx.table, ctx.population_scope, ctx.literature,
                                          ctx.oracle)
        model = ctx.models["global" if method == "global" else "spatial"][0]

        def once() -> None:
            warped, displacement, runtime = register(model, item, hyper, ctx.device)
            score_pair(item, method, warped, displacement, runtime, source, ctx.class_names, args.hd95)

        plan.add_measurement(method, measure(once, ctx.device), len(ctx.pair_ids), "pair")
    formats = sorted(set(ctx.formats))
    written = "nothing but metrics and figures" if args.no_save_outputs else \
        f"<method>/ volumes as {', '.join(formats)}"
    plan.add("would write", f"{ctx.out}/: {written}, metrics.csv, summary.csv, summary.md, figures/, config.json")
    return plan.print()
