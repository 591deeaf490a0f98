"""Instance optimisation against the network and against elastix on the same test pairs, in one run on one CPU.

Usage::

    python benchmarks/bench_instance.py [--seed 0] [--pairs 8] [--val-pairs 8] [--steps 200] [--grid-step 0.2]
                                        [--threads 2] [--work runs/bench_instance] [--demo-run DIR]

On the demo's phantom (2D 64x64, the seed's own phantom and models: ``demo.py --seed K`` into
``--work/seed<K>``, reused by a rerun; or an existing demo folder with ``--demo-run``):

1. the parameters of the optimisation are chosen on the seed's validation pairs by
   ``parameter_identification.py --score-with instance --criterion tre`` (grid ``--grid-step``, ``--steps`` steps
   per level, global and per-class population scopes);
2. ``inference.py`` registers the first ``--pairs`` test pairs with ``global``, ``tissue_population``, their
   ``+io`` counterparts (from the network's velocity, with the values of step 1), ``identity+io`` (classical: from
   zero with the tissue-specific population values) and ``elastix`` (the B-spline baseline at its defaults), all
   in the same process, so the seconds per pair compare on the same CPU.

The optimisation's learning rate and levels are inference's defaults (tuned on seed 0's validation pairs). Prints a
table (EPE, TRE, Dice, folding, seconds per pair per method) and writes ``benchmarks/results/instance.json``.
``--quick``: 2 validation pairs, 2 test pairs, 30 steps, grid step 0.5 (a smoke run of the pipeline).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import add_common_args, format_table, machine_info, write_results  # noqa: E402
from hypermorph_spatially_adaptive.stages.demo import main as demo_main  # noqa: E402
from hypermorph_spatially_adaptive.stages.identification import main as identify_main  # noqa: E402
from hypermorph_spatially_adaptive.stages.inference import main as infer_main  # noqa: E402
from hypermorph_spatially_adaptive.stages.inference.instance import DEFAULT_LEVELS, DEFAULT_LR  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "instance.json"
METHODS = ("global", "tissue_population", "identity", "elastix")
#: metrics.csv column -> the report's name.
METRICS = {"epe_mm": "epe_mm", "tre_mm": "tre_mm", "dice_mean": "dice", "folding_percent": "folding_percent",
           "sdlogj": "sdlogj", "runtime_s": "seconds_per_pair"}


def _mean(rows: Sequence[dict], column: str) -> float | None:
    values = [float(r[column]) for r in rows if r.get(column, "") != ""]
    return statistics.fmean(values) if values else None


def _stage(main, argv: list[str], what: str) -> float:
    started = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"bench_instance: {what} failed with exit code {code}")
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, DEFAULT_OUT, threads=2)
    parser.add_argument("--seed", type=int, default=0, help="the phantom's and the models' seed (demo.py --seed)")
    parser.add_argument("--pairs", type=int, default=None, help="test pairs (default 8, --quick 2)")
    parser.add_argument("--val-pairs", type=int, default=None, help="validation pairs that choose (8, --quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per level (200, --quick 30)")
    parser.add_argument("--grid-step", type=float, default=None, help="grid of the choice (0.2, --quick 0.5)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_instance", help="folder of the runs")
    parser.add_argument("--demo-run", type=Path, default=None,
                        help="an existing demo.py folder (data/, global/, spatial/, parameters_for_inference.csv) "
                             "instead of running the demo for --seed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = args.pairs or (2 if args.quick else 8)
    val_pairs = args.val_pairs or (2 if args.quick else 8)
    steps = args.steps or (30 if args.quick else 200)
    grid_step = args.grid_step or (0.5 if args.quick else 0.2)
    started = time.perf_counter()
    machine = machine_info(args.device)
    demo = args.demo_run or args.work / f"seed{args.seed}"
    if args.demo_run is None:
        _stage(demo_main, ["--out", str(demo), "--seed", str(args.seed), "--device", args.device], "demo.py")
    tag = f"steps{steps}_grid{grid_step:g}_val{val_pairs}_test{pairs}"
    work = args.work / f"seed{args.seed}_{tag}" if args.demo_run is None else args.work / f"{demo.name}_{tag}"
    data = ["--dataset", "phantom", "--data-root", str(demo / "data"), "--device", args.device]
    optimisation = ["--instance-steps", str(steps), "--instance-lr", str(DEFAULT_LR), "--instance-levels",
                    *map(str, DEFAULT_LEVELS)]
    choice_dir = work / "identification_instance"
    choice_seconds = 0.0
    if not (choice_dir / "parameters.csv").is_file():
        choice_seconds = _stage(identify_main, [*data, "--split", "val", "--max-pairs", str(val_pairs),
                                                "--global-model", str(demo / "global"), "--score-with", "instance",
                                                "--criterion", "tre", "--grid-step", str(grid_step), "--figures",
                                                "0", *optimisation, "--out", str(choice_dir)],
                                "identification --score-with instance")
    inference_dir = work / "inference"
    resume = ["--resume"] if (inference_dir / "run.json").is_file() else []
    _stage(infer_main, [*data, "--split", "test", "--max-pairs", str(pairs), "--global-model", str(demo / "global"),
                        "--spatial-model", str(demo / "spatial"), "--parameters",
                        str(demo / "parameters_for_inference.csv"), "--methods", *METHODS, *optimisation,
                        "--instance-parameters", str(choice_dir / "parameters.csv"), "--figures", "0",
                        "--no-save-outputs", "--out", str(inference_dir), *resume], "inference")
    with open(inference_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    results = [{"method": m, "pairs": sum(r["method"] == m for r in rows),
                **{name: _mean([r for r in rows if r["method"] == m], column) for column, name in METRICS.items()}}
               for m in methods]
    with open(choice_dir / "parameters.csv", newline="") as handle:
        chosen = [r for r in csv.DictReader(handle) if r["scope"] in ("global", "population")]
    print(f"seed {args.seed}; {pairs} test pairs; {steps} steps per level, levels {list(DEFAULT_LEVELS)}, lr "
          f"{DEFAULT_LR}; {torch.get_num_threads()} threads; load average {machine['load_average_1min']}")
    print(format_table(["method", "EPE mm", "TRE mm", "Dice", "folding %", "s per pair"],
                       [[r["method"], r["epe_mm"], r["tre_mm"], r["dice"], r["folding_percent"],
                         r["seconds_per_pair"]] for r in results]))
    report = {"benchmark": "instance optimisation against the networks and elastix on the same test pairs",
              "machine": machine, "device": args.device, "threads": torch.get_num_threads(), "quick": args.quick,
              "seed": args.seed, "test_pairs": pairs, "val_pairs": val_pairs, "steps_per_level": steps,
              "levels": list(DEFAULT_LEVELS), "lr": DEFAULT_LR, "grid_step": grid_step, "criterion": "tre",
              "demo_run": str(demo), "choice_seconds": choice_seconds,
              "io_parameters": [{k: r[k] for k in ("scope", "class_name", "lam", "mu")} for r in chosen],
              "results": results, "elapsed_s": time.perf_counter() - started}
    write_results(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
