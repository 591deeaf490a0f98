"""Measure the locality of a spatially adaptive model on a dataset split and write ``OUT/locality.csv``.

For each foreground class: ``locality`` (near 1 when the class's own values do, inside the class, what raising every
class does there) and ``leakage`` (near 0 when they act nowhere else), from the strain of the registered fields;
see :mod:`...evaluation.locality`. Columns of ``locality.csv``: ``class_id, class_name, locality, leakage, pairs,
base_lam, base_mu, raised_lam, raised_mu``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ...evaluation.locality import DEFAULT_BASE, DEFAULT_RAISED, Locality, measure_locality
from ...files import atomic_write_csv
from ...models.trained import load_trained_model
from ...runtime import resolve_device, seed_everything
from ..cli import HelpFormatter, add_data_args, add_model_arg, add_run_args, lam_mu, open_dataset, run_stage, \
    write_config
from ..run_folder import claim_folder, record_run, run_record

__all__ = ["COLUMNS", "build_parser", "measure", "main"]

# Options that do not change the result (left out of run.json); the model is recorded by its file's identity.
_NOT_RECORDED = ("out", "device", "config", "spatial_model", "data_scan", "dry_run", "resume", "overwrite",
                 "max_voxels")
COLUMNS = ("class_id", "class_name", "locality", "leakage", "pairs", "base_lam", "base_mu", "raised_lam",
           "raised_mu")


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``locality.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_args(parser, split="val")
    add_run_args(parser, out="runs/default/locality")
    group = parser.add_argument_group("measurement")
    add_model_arg(group, "spatial", "the model to measure")
    group.add_argument("--base-params", type=float, nargs=2, default=list(DEFAULT_BASE), metavar=("LAM", "MU"),
                       help="the (lam, mu) of every class in the base vector")
    group.add_argument("--raised-params", type=float, nargs=2, default=list(DEFAULT_RAISED), metavar=("LAM", "MU"),
                       help="the (lam, mu) a raised class gets")
    group.add_argument("--max-pairs", type=int, default=None, metavar="N", help="use the first N pairs")
    group.add_argument("--resume", action="store_true",
                       help="measure again into the finished run in --out (only with the same options)")
    return parser


def measure(args: argparse.Namespace) -> tuple[Locality, Path]:
    """Check the options, measure, write ``run.json``, ``locality.csv`` and ``config.json`` in ``--out``; the result
    and file."""
    base, raised = lam_mu(args.base_params, "--base-params"), lam_mu(args.raised_params, "--raised-params")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model, info = load_trained_model(args.spatial_model, expect="spatial", map_location=device,
                                     argument="--spatial-model")
    dataset = open_dataset(args)
    if tuple(dataset.class_names) != tuple(info.class_names):
        raise ValueError(f"--dataset {args.dataset}: classes {list(dataset.class_names)} differ from the model's "
                         f"{list(info.class_names)}")
    count = len(dataset) if args.max_pairs is None else min(args.max_pairs, len(dataset))
    items = [dataset[index] for index in range(count)]
    if any("fixed_labels" not in item for item in items):
        raise ValueError(f"--dataset {args.dataset}: locality needs the fixed labels of every pair")
    out = Path(args.out)
    options = {key: value for key, value in vars(args).items() if key not in _NOT_RECORDED}
    record = run_record("locality", options, {"--spatial-model": info.path}, paths=("data_root",))
    claim_folder(out, record, (out / "locality.csv").exists(), args.resume, args.overwrite)
    result = measure_locality(model, items, info.class_names, base, raised)
    record_run(out, record)
    rows = [[c, name, value, leak, result.pairs, *base, *raised]
            for c, (name, value, leak) in enumerate(zip(result.class_names[1:], result.locality, result.leakage),
                                                    start=1)]
    path = atomic_write_csv(out / "locality.csv", COLUMNS, rows)
    write_config(out, args, stage="locality", conditioning=model.conditioning, class_names=list(info.class_names))
    print(f"{'class':<14}{'locality':>10}{'leakage':>10}   ({result.pairs} pairs, {model.conditioning} model)")
    for name, value, leak in zip(result.class_names[1:], result.locality, result.leakage):
        print(f"{name:<14}{value:>10.3f}{leak:>10.3f}")
    return result, path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``locality.py`` and ``hypermorph-locality``."""
    return run_stage(build_parser(), lambda args: measure(args)[1], argv, stage="locality")
