"""Locality of the spatial-model variants at an equal training budget: which cause makes a model tissue-specific?

Usage::

    python benchmarks/bench_locality.py [--threads 2] [--quick] [--steps 1000] [--work runs/bench_locality]

On the demo's phantom (2D 64x64, seed 0, the demo's widths) one global model is trained with the demo's recipe
(2000 steps); then every variant below trains its spatial model for ``--steps`` steps (the demo's spatial budget)
and is measured on the validation pairs: locality and leakage per class
(:func:`~hypermorph_spatially_adaptive.evaluation.locality.measure_locality`, base (0.05, 0.05), raised
(0.45, 0.45)), and the mean EPE at the control vector (the global pair (0.1, 0.1) for every class). The variants
separate the suspected causes: the warm start that feeds each class 1/C of the global weight, mixed against
independent sampling, training from scratch, a longer budget, the parameter maps as input channels, and
tissue-wise kernels (with no training at all, the budget, and from scratch). Runs live in ``--work`` and are
reused by a rerun. ``--quick`` shrinks everything to a smoke run (32 px, a few steps). Prints a table and writes
``benchmarks/results/locality.json``.
"""
from __future__ import annotations

import argparse
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
from hypermorph_spatially_adaptive.data import get_dataset, phantom  # noqa: E402
from hypermorph_spatially_adaptive.evaluation.locality import measure_locality  # noqa: E402
from hypermorph_spatially_adaptive.evaluation.pair_metrics import end_point_error  # noqa: E402
from hypermorph_spatially_adaptive.models.trained import load_trained_model  # noqa: E402
from hypermorph_spatially_adaptive.stages.training import main as train_main  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "locality.json"
WIDTHS = ["--enc-features", "16", "32", "32", "--dec-features", "32", "32", "32", "16", "--hyper-layers", "4",
          "--hyper-units", "64"]
CONTROL = (0.1, 0.1)

#: name -> (conditioning, warm start, class sampling, steps as a multiple of --steps)
VARIANTS = {
    "vector, warm start, mixed sampling (the former demo recipe)": ("vector", True, "mixed", 1),
    "vector, warm start, independent sampling": ("vector", True, "independent", 1),
    "vector, from scratch, independent (the paper's recipe)": ("vector", False, "independent", 1),
    "vector, from scratch, independent, 3x the budget": ("vector", False, "independent", 3),
    "maps, warm start, independent": ("maps", True, "independent", 1),
    "maps, from scratch, independent": ("maps", False, "independent", 1),
    "tissue, warm start, no training (recommended)": ("tissue", True, "independent", 0),
    "tissue, warm start, independent": ("tissue", True, "independent", 1),
    "tissue, from scratch, independent": ("tissue", False, "independent", 1),
}


def _train(model_type: str, out: Path, argv: list[str], steps: int) -> float:
    """Train into ``out`` unless it already holds a finished run; the seconds spent (0 when reused)."""
    if (out / "checkpoints" / "last.pt").is_file():
        return 0.0
    started = time.perf_counter()
    every = ["--val-every", str(max(1, steps)), "--log-every", str(max(1, steps // 10 or 1))]
    code = train_main(model_type, [*argv, "--steps", str(steps), *every, "--out", str(out)])
    if code != 0:
        raise SystemExit(f"bench_locality: training {out} failed with exit code {code}")
    return time.perf_counter() - started


@torch.no_grad()
def _control_epe(model: torch.nn.Module, items: Sequence[dict], num_classes: int) -> float:
    hyper = torch.tensor([[CONTROL[0]] * num_classes + [CONTROL[1]] * num_classes])
    errors = []
    for item in items:
        field = model(item["moving"][None], item["fixed"][None], hyper, item["fixed_labels"][None]).displacement
        errors.append(end_point_error(field[0], item["gt_displacement"], item["spacing"].tolist(),
                                      item["fixed_labels"][0] > 0))
    return statistics.fmean(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, DEFAULT_OUT, threads=2)
    parser.add_argument("--steps", type=int, default=None, help="spatial training budget (default 1000, --quick 4)")
    parser.add_argument("--global-steps", type=int, default=None, help="global training steps (2000, --quick 6)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_locality", help="folder of the runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else (4 if args.quick else 1000)
    global_steps = args.global_steps if args.global_steps is not None else (6 if args.quick else 2000)
    size, subjects, held_out = (32, 8, 2) if args.quick else (64, 56, 8)
    work = args.work / ("quick" if args.quick else "full")
    data = work / "data"
    if not (data / "PHANTOM_dataset.json").is_file():
        phantom.write_dataset(data, ndim=2, subjects=subjects, shape=(size, size), seed=0, val=held_out,
                              test=held_out, progress=False)
    common = ["--dataset", "phantom", "--data-root", str(data), "--device", args.device, "--seed", "0",
              "--batch-size", "4" if not args.quick else "2", "--lr", "1e-3", "--lr-schedule", "cosine",
              "--workers", "0"]
    global_run = work / "global"
    global_seconds = _train("global", global_run, [*common, *WIDTHS], global_steps)
    items = [get_dataset("phantom", data, "val")[i] for i in range(held_out)]
    results = []
    for name, (conditioning, warm, sampling, factor) in VARIANTS.items():
        run = work / name.split(" (")[0].replace(", ", "_").replace(" ", "-")
        flags = ["--conditioning", conditioning, "--class-sampling", sampling]
        flags += ["--init-from", str(global_run)] if warm else WIDTHS
        seconds = _train("spatial", run, [*common, *flags], steps * factor)
        model, info = load_trained_model(run)
        result = measure_locality(model, items, info.class_names)
        results.append({"variant": name, "conditioning": conditioning, "warm_start": warm, "class_sampling": sampling,
                        "steps": steps * factor, "train_seconds": seconds, "class_names": list(info.class_names[1:]),
                        "locality": list(result.locality), "leakage": list(result.leakage),
                        "control_epe_mm": _control_epe(model, items, info.num_classes)})
    report = {"quick": args.quick, "device": args.device, "threads": args.threads, "steps": steps,
              "global_steps": global_steps, "global_seconds": global_seconds, "pairs": len(items), "size": size,
              "machine": machine_info(args.device), "results": results}
    write_results(report, args.out)
    rows = [[r["variant"], min(r["locality"]), max(r["locality"]), min(r["leakage"]), max(r["leakage"]),
             r["control_epe_mm"], r["steps"]] for r in results]
    print(format_table(["variant", "locality min", "max", "leakage min", "max", "EPE at control (mm)", "steps"],
                       rows, digits=(0, 2, 2, 2, 2, 3, 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
