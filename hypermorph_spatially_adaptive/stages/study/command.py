"""The study runner (``study.py``, ``hypermorph-study``): regimes x seeds x spatial variants on the phantom, with the
instance optimisation and elastix, aggregated with 95% intervals and paired tests against the global model and the
control, written to a markdown report with one section per regime.

    python study.py                          # the quick CPU preset: 2 regimes x 3 seeds on 2 cores
    python study.py --preset quick-3d        # the small 3D phantom (32^3), 2 regimes x 3 seeds on 2 cores
    python study.py --preset gpu --jobs 1    # 5 seeds at 128 px with longer training, for one GPU
    python study.py --report-only            # rewrite the report from finished runs

Runs live under ``--out`` and resume: a rerun skips every finished stage. The report goes to ``--report``
(default: the preset's, ``docs/STUDY.md`` for ``quick``, see :data:`.presets.REPORTS`) with its figures in a
folder beside it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from ...files import atomic_write_json
from ...runtime import resolve_device
from ..cli import HelpFormatter, error_message, write_config
from ..options import options_class, options_namespace
from ..run_folder import OutputLock, clear_folder
from .aggregate import collect
from .presets import DEV_SEED, PRESETS, REPORTS, VARIANTS, Regime
from .report import write_report
from .runner import run_seed

__all__ = ["build_parser", "run_study", "StudyOptions", "study", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="data size, budget and seeds")
    parser.add_argument("--out", default="runs/study", help="folder of the runs (one sub-folder per preset and seed)")
    parser.add_argument("--report", default=None,
                        help="markdown report, figures beside it (default: the preset's: "
                             + ", ".join(f"{name} {path}" for name, path in REPORTS.items()) + ")")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to run (default: the preset's)")
    parser.add_argument("--regimes", nargs="+", default=None, metavar="NAME",
                        help="regimes to run and report, e.g. rich-2d-64 ct-2d-64 (default: the preset's)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="spatial-model variants to compare")
    parser.add_argument("--jobs", type=int, default=None,
                        help="seeds run at once, each in its own process with cores / jobs threads "
                             "(default: the preset's; use 1 on a GPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--report-only", action="store_true", help="aggregate finished runs, run nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove the preset's runs already in --out and start afresh (a rerun otherwise "
                             "continues them)")
    return parser


def _regimes(args: argparse.Namespace, settings: dict) -> list[Regime]:
    regimes = {regime.name: regime for regime in settings["regimes"]}
    unknown = [name for name in args.regimes or () if name not in regimes]
    if unknown:
        raise ValueError(f"--regimes: {unknown} not in the {args.preset} preset's regimes {list(regimes)}")
    return [regimes[name] for name in args.regimes] if args.regimes else list(regimes.values())


def regime_settings(settings: dict, regime: Regime) -> dict:
    """The preset's settings for one regime: its texture, dimension and size."""
    return {**{k: v for k, v in settings.items() if k != "regimes"}, "texture": regime.texture, "ndim": regime.ndim,
            "size": regime.size}


def run_study(args: argparse.Namespace) -> Path:
    """Run (or resume) every regime and seed, then aggregate and write the report; return the report's path."""
    settings = dict(PRESETS[args.preset])
    regimes = _regimes(args, settings)
    seeds = tuple(args.seeds or settings["seeds"])
    if DEV_SEED in seeds:
        raise SystemExit(f"study: seed {DEV_SEED} chose the settings and cannot be reported; choose other --seeds")
    jobs = args.jobs or settings["jobs"]
    if jobs < 1:
        raise SystemExit(f"study: --jobs must be >= 1, got {jobs}")
    out = Path(args.out) / args.preset
    started = time.perf_counter()
    if not args.report_only:
        device = str(resolve_device(args.device))
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, args, settings={**settings, "regimes": [vars(r) for r in regimes]}, seeds=list(seeds))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        runs = [(out / regime.name, seed, regime_settings(settings, regime)) for regime in regimes for seed in seeds]
        if jobs == 1:
            for folder, seed, values in runs:
                run_seed(folder, seed, values, args.variants, device)
        else:
            # Separate processes (spawned: no inherited thread pools) with a share of the cores each.
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(run_seed, folder, seed, values, args.variants, device, threads)
                           for folder, seed, values in runs]
                for future in futures:
                    future.result()
    # Compute time over every invocation that ran stages (a resumed study adds to it).
    record = out / "runtime.json"
    runtime = json.loads(record.read_text())["seconds"] if record.is_file() else None
    if not args.report_only:
        runtime = (runtime or 0.0) + time.perf_counter() - started
        atomic_write_json({"seconds": runtime, "jobs": jobs}, record)
    studies = [(regime, collect(out / regime.name, seeds, args.variants)) for regime in regimes]
    report = Path(args.report or REPORTS.get(args.preset, f"docs/STUDY_{args.preset}.md"))
    report = write_report(out, studies, report, args.preset, settings, runtime)
    print(report.read_text())
    return report


def _locked_study(args: argparse.Namespace) -> Path:
    """:func:`run_study` with the preset folder's lock held (one study per preset folder at a time)."""
    if args.report_only:
        return run_study(args)
    with OutputLock(Path(args.out) / args.preset):
        if args.overwrite:
            clear_folder(Path(args.out) / args.preset)
        return run_study(args)


StudyOptions = options_class("StudyOptions", build_parser, "the study (study.py)", __name__)


def study(options: StudyOptions) -> Path:
    """The study from Python (as ``study.py``); returns the path of the report."""
    return _locked_study(options_namespace(options))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``study.py`` and ``hypermorph-study``: exit 2 when the study's folder is in use by another run
    or a stage refused its input, 1 when a stage failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _locked_study(args)
    except (ValueError, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error_message(error)}\n")
    except RuntimeError as error:
        parser.exit(1, f"{parser.prog}: error: {error_message(error)}\n")
    return 0
