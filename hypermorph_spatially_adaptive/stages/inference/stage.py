"""The inference run: register every pair with every method, score it, write the outputs and the report.

Writes ``OUT/<method>/`` (:mod:`.pairs`), ``OUT/metrics.csv``, ``OUT/summary.{csv,md}`` (:mod:`.report`),
``OUT/figures/`` (:mod:`.figures`) and ``OUT/config.json``; with method ``tissue_oracle`` first
``OUT/oracle_parameters.csv`` (:mod:`.oracle`); with method ``elastix`` ``OUT/elastix/parameter_map.txt``
(:mod:`.elastix`). With ``--instance-steps`` every method but elastix has an ``+io`` counterpart (:mod:`.instance`).
Rows of finished pairs go to ``OUT/.partial/`` as they are written, so ``--resume`` skips them (and reuses the
oracle's file).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from ...core.transform import warp
from ...files import atomic_write_json
from ...runtime import seed_everything
from ..cli import write_config
from ..parameter_table import POPULATION, POPULATION_REFINED
from ..run_folder import claim_folder, record_run
from . import figures, report
from .context import StageContext, prepare, run_identity
from .dry_run import dry_run
from .elastix import ELASTIX, import_elastix, register_elastix, write_parameter_map
from .instance import IDENTITY, base_method, optimise_pair
from .oracle import ORACLE_FILE, choose_oracle
from .pairs import TISSUE_ORACLE, method_parameters, output_paths, predict, score_pair, write_outputs

__all__ = ["run"]


def _notices(ctx: StageContext) -> list[str]:
    notes = []
    if ctx.args.refined and ctx.population_scope != POPULATION_REFINED:
        notes.append(f"--refined: {ctx.args.parameters} has no {POPULATION_REFINED!r} scope; using "
                     f"{POPULATION!r}")
    if "tissue_subject" in ctx.methods:
        fallback = [p for p in ctx.pair_ids if not ctx.table.has(p)]
        if fallback:
            notes.append(f"tissue_subject: {len(fallback)} of {len(ctx.pair_ids)} pair(s) have no subject-specific "
                         f"rows and use the {ctx.population_scope!r} parameters: {', '.join(fallback)}")
    return notes


def _pending(ctx: StageContext, index: int) -> tuple[list[str], dict[str, dict]]:
    """Methods still to run for pair ``index`` and the rows of those done by an earlier run (``--resume``)."""
    done: dict[str, dict] = {}
    if ctx.args.resume:
        stem = ctx.stems[index]
        for method in ctx.methods:
            partial = ctx.out / ".partial" / method / f"{stem}.json"
            outputs = output_paths(ctx.out, method, stem, labels=False, fmt=ctx.formats[index])
            if partial.is_file() and (ctx.args.no_save_outputs or all(p.is_file() for p in outputs.values())):
                done[method] = json.loads(partial.read_text())
    return [m for m in ctx.methods if m not in done], done


def _start(ctx: StageContext, item: dict, pair_id: str, method: str, warmed: set) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor, float, str]:
    """A method that is not optimised on the pair: warped ``[1, 1, *S]``, displacement and velocity
    ``[1, ndim, *S]`` (voxels; ``identity``: zero, ``elastix``: None, it has no counterpart), seconds and
    the parameters' scope."""
    if method == ELASTIX:
        displacement, seconds = register_elastix(item["fixed"], item["moving"], item["spacing"].tolist(),
                                                 ctx.elastix, threads=torch.get_num_threads())
        return warp(item["moving"][None], displacement), displacement, None, seconds, ELASTIX
    hyper, source = method_parameters(method, pair_id, ctx.table, ctx.population_scope, ctx.literature,
                                      ctx.oracle)
    if method == IDENTITY:
        zero = item["fixed"].new_zeros(1, item["fixed"].dim() - 1, *item["fixed"].shape[1:])
        return item["moving"][None], zero, zero, 0.0, source
    kind = "global" if method == "global" else "spatial"
    model = ctx.models[kind][0]
    if kind not in warmed:  # the first call pays for allocations and kernel selection; keep it out of runtime_s
        predict(model, item, hyper, ctx.device)
        warmed.add(kind)
    output, seconds = predict(model, item, hyper, ctx.device)
    return output.warped, output.displacement, output.velocity, seconds, source


def _optimised(ctx: StageContext, item: dict, pair_id: str, method: str, start: torch.Tensor, start_seconds: float
               ) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """``method``'s ``+io`` counterpart from its velocity ``start``: warped, displacement, the seconds of both
    (network and optimisation) and the parameters' scope (from ``--instance-parameters`` when given)."""
    table = ctx.instance_table or ctx.table
    hyper, source = method_parameters(method, pair_id, table, ctx.population_scope, ctx.literature,
                                      ctx.oracle)
    model = ctx.models.get("global" if method == "global" else "spatial")
    int_steps = model[0].int_steps if model else next((m.int_steps for m, _ in ctx.models.values()), 7)
    result = optimise_pair(item, None if method == IDENTITY else start, hyper, ctx.instance, ctx.device, int_steps)
    return result.warped, result.displacement, start_seconds + result.seconds, source


def _run_pair(ctx: StageContext, index: int, methods: list[str], warmed: set) -> dict[str, dict]:
    """Register, score and write pair ``index`` with ``methods``; returns their rows (figure for the first N)."""
    item = ctx.item(index)
    pair_id, stem = ctx.pair_ids[index], ctx.stems[index]
    rows, kept, starts = {}, {}, {}
    for method in methods:
        base = base_method(method)
        if base is None:
            warped, displacement, velocity, runtime_s, source = _start(ctx, item, pair_id, method, warmed)
            starts[method] = (velocity, runtime_s)
        else:
            if base not in starts:  # its row came from an interrupted run (--resume)
                starts[base] = _start(ctx, item, pair_id, base, warmed)[2:4]
            warped, displacement, runtime_s, source = _optimised(ctx, item, pair_id, base, *starts[base])
        result = score_pair(item, method, warped, displacement, runtime_s, source, ctx.class_names,
                            ctx.args.hd95)
        if not ctx.args.no_save_outputs:
            write_outputs(output_paths(ctx.out, method, stem, result.warped_labels is not None, ctx.formats[index]),
                          result, item["affine"], ctx.formats[index])
        atomic_write_json(result.row, ctx.out / ".partial" / method / f"{stem}.json")
        rows[method] = result.row
        if index < ctx.args.figures:  # full volumes are kept only for the pairs that get a figure
            kept[method] = result
    if kept:
        figures.pair_figure(ctx.out / "figures" / f"pair_{stem}.png", item, kept, ctx.class_names)
    return rows


def _choose_oracle(ctx: StageContext) -> str:
    """Choose the ``tissue_oracle`` vector (unless ``--resume`` found it) and say how, for the summary's notes."""
    args, path = ctx.args, ctx.out / ORACLE_FILE
    what = (f"tissue_oracle: an upper reference, not a method for real data: the spatial model at the per-class "
            f"vector chosen by the end-point error against the true displacement on {len(ctx.oracle_pair_ids)} "
            f"pair(s) of split {args.oracle_split!r} ({ORACLE_FILE})")
    if ctx.oracle is not None:
        return f"{what}, reused from the interrupted run (--resume)"
    items = [ctx.oracle_dataset[i] for i in range(len(ctx.oracle_pair_ids))]
    ctx.oracle, search = choose_oracle(ctx.models["spatial"][0], items, ctx.table, ctx.population_scope, path,
                                       args.oracle_step, args.oracle_sweeps)
    return (f"{what}; mean foreground EPE there {search.start_score:.4g} mm at the {ctx.population_scope!r} vector "
            f"-> {search.score:.4g} mm after {search.sweeps} sweep(s), {search.evaluations} vectors evaluated")


def run(args: argparse.Namespace) -> Path:
    """Validate every input, then register, score and write (see the module docstring); returns ``--out``."""
    ctx = prepare(args)
    if args.dry_run:
        return dry_run(ctx)
    seed_everything(args.seed)
    record = run_identity(ctx)
    # Rows already written must come from the same models, parameters and data; --max-pairs only says how many.
    claim_folder(ctx.out, record, (ctx.out / "metrics.csv").exists() or (ctx.out / ".partial").exists(), args.resume,
                 args.overwrite, may_differ=("max_pairs",))
    record_run(ctx.out, record)  # also removes the temporary files of a killed run's writes
    write_config(ctx.out, args, methods=ctx.methods, class_names=list(ctx.class_names),
                 population_scope=ctx.population_scope, pair_ids=ctx.pair_ids,
                 models={kind: str(info.path) for kind, (_, info) in ctx.models.items()},
                 **({"instance_optimisation": vars(ctx.instance)} if ctx.instance is not None else {}),
                 **({"elastix": ctx.elastix.as_dict()} if ctx.elastix is not None else {}),
                 **({"oracle_pair_ids": ctx.oracle_pair_ids} if TISSUE_ORACLE in ctx.methods else {}))
    if ctx.elastix is not None:
        write_parameter_map(import_elastix(), ctx.out / ELASTIX / "parameter_map.txt", len(ctx.item(0)["spacing"]),
                            ctx.elastix)
    notes = _notices(ctx)
    if TISSUE_ORACLE in ctx.methods:
        notes.append(_choose_oracle(ctx))
    for note in notes:
        tqdm.write(f"notice: {note}")
    rows: list[dict] = []
    warmed: set = set()
    for index in tqdm(range(len(ctx.pair_ids)), desc="inference", unit="pair", dynamic_ncols=True):
        pending, done = _pending(ctx, index)
        if pending:
            done.update(_run_pair(ctx, index, pending, warmed))
        rows.extend(done[m] for m in ctx.methods)
    report.write_metrics(ctx.out / "metrics.csv", rows, ctx.class_names)
    summary = report.write_summary(ctx.out, rows, ctx.class_names, ctx.methods, notes=notes)
    if args.figures > 0:
        figures.dice_bar_chart(ctx.out / "figures" / "dice_per_class.png", rows, ctx.class_names,
                                         ctx.methods)
    print(summary)
    return ctx.out
