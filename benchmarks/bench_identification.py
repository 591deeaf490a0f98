"""Grid search of parameter identification: grid points batched through the hypernetwork against one per pass.

Usage::

    python benchmarks/bench_identification.py [--threads 2] [--device cpu] [--repeats 3] [--quick]

Times :func:`~hypermorph_spatially_adaptive.stages.identification.scoring.evaluate_pair` (forward passes of the
global model, nearest warping of the labels, per-class Dice and TRE) on one synthetic 2D 128x128 pair over the
66-point simplex grid (step 0.1) with ``--grid-batch`` 1 (one grid point per forward pass), 4, 8, 16 and 66. The
default-width global model is untrained (weights do not change the cost). Variants run round-robin after a warm-up,
so background load hits them alike; the median over ``--repeats`` is reported with the minimum and the paired
speedup (median over rounds of unbatched / batched time of the same round). The target is batched >= 2x faster than
unbatched: a GPU (``--device cuda``) meets it many times over; on the CPU one point per pass already keeps the cores
busy, and only small batches gain (hence ``scoring.default_grid_batch``). Then the
per-point cost on 3D 96x96x96, a few points only (one warm-up point): one point per pass, and ``--points-3d``
points in one pass. ``--quick`` shrinks everything to a smoke run (2D 64x64, 3D 48^3, one repeat). Prints a
table and writes ``benchmarks/results/identification.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (add_common_args, format_table, machine_info, resolve_benchmark_device,  # noqa: E402
                               synthetic_pair, timed, write_results)
from hypermorph_spatially_adaptive import HyperVxmDense  # noqa: E402
from hypermorph_spatially_adaptive.stages.identification.grid import simplex_grid  # noqa: E402
from hypermorph_spatially_adaptive.stages.identification.scoring import evaluate_pair  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "identification.json"
NUM_CLASSES = 5
KEYPOINTS = 300
TARGET_SPEEDUP = 2.0


def time_variants(model: torch.nn.Module, item: dict, grids: dict[str, tuple[torch.Tensor, int]], repeats: int,
                  device: torch.device, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per repeat of each variant ``name -> (grid, grid_batch)``, run round-robin.

    The warm-up (allocator, conv algorithm choice) runs one pass of each variant, or, with ``warmup=False``, a
    single one-point pass only (for 3D, where every pass costs seconds)."""
    if warmup:
        for grid, batch in grids.values():
            evaluate_pair(model, item, grid[:batch], NUM_CLASSES, batch)
    else:
        evaluate_pair(model, item, next(iter(grids.values()))[0][:1], NUM_CLASSES, 1)
    samples: dict[str, list[float]] = {name: [] for name in grids}
    for _ in range(repeats):
        for name, (grid, batch) in grids.items():
            samples[name].append(timed(lambda: evaluate_pair(model, item, grid, NUM_CLASSES, batch), device)[0])
    return samples


def _record(case: str, shape: Sequence[int], points: int, batch: int, seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"case": case, "shape": list(shape), "grid_points": points, "grid_batch": batch, "median_s": median,
            "min_s": min(seconds), "ms_per_point": 1000 * median / points, "samples_s": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, DEFAULT_OUT, threads=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per 2D variant")
    parser.add_argument("--points-3d", type=int, default=4, help="grid points of the batched 3D pass")
    parser.add_argument("--skip-3d", action="store_true", help="only the 2D comparison")
    args = parser.parse_args(argv)
    device = resolve_benchmark_device(parser, args)
    repeats = 1 if args.quick else args.repeats
    shape_2d, shape_3d = ((64, 64), (48, 48, 48)) if args.quick else ((128, 128), (96, 96, 96))
    machine = machine_info(device)  # records the load average before this benchmark adds its own
    torch.manual_seed(0)
    results = []

    grid = simplex_grid(0.1)
    model = HyperVxmDense(shape_2d, 2).to(device).eval()
    item = synthetic_pair(shape_2d, NUM_CLASSES, KEYPOINTS)
    variants = {f"2d batch {b}": (grid, b) for b in (1, 4, 8, 16, grid.shape[0])}
    samples = time_variants(model, item, variants, repeats, device)
    for name, (_, batch) in variants.items():
        results.append(_record(name, shape_2d, grid.shape[0], batch, samples[name]))
    unbatched = results[0]["median_s"]
    for record in results:
        record["speedup_over_unbatched"] = unbatched / record["median_s"]
        # Ratios within a round cancel slow changes of the background load.
        record["paired_speedup"] = statistics.median(a / b for a, b in zip(results[0]["samples_s"],
                                                                            record["samples_s"]))

    if not args.skip_3d:
        model = HyperVxmDense(shape_3d, 2).to(device).eval()
        item = synthetic_pair(shape_3d, NUM_CLASSES, KEYPOINTS)
        grid_3d = grid[1:1 + args.points_3d]
        variants = {"3d batch 1": (grid_3d[:1], 1), f"3d batch {len(grid_3d)}": (grid_3d, len(grid_3d))}
        samples_3d = time_variants(model, item, variants, 1, device, warmup=False)
        for name, (points, batch) in variants.items():
            results.append(_record(name, shape_3d, points.shape[0], batch, samples_3d[name]))

    print(format_table(["case", "shape", "points", "batch", "median s", "min s", "ms/point", "speedup", "paired"],
                       [[r["case"], "x".join(map(str, r["shape"])), r["grid_points"], r["grid_batch"], r["median_s"],
                         r["min_s"], r["ms_per_point"], r.get("speedup_over_unbatched"), r.get("paired_speedup")]
                        for r in results], digits=(0, 0, 0, 0, 3, 3, 1, 2, 2)))
    best = max(r["paired_speedup"] for r in results if r.get("paired_speedup") and r["grid_batch"] > 1)
    print(f"best batched speedup (paired) {best:.2f}, target >= {TARGET_SPEEDUP}; load average at start "
          f"{machine['load_average_1min']}")
    report = {"benchmark": "identification grid search: evaluate_pair batched vs one grid point per forward pass",
              "device": str(device), "threads": torch.get_num_threads(), "quick": args.quick, "repeats": repeats,
              "num_classes": NUM_CLASSES, "machine": machine, "results": results,
              "targets_met": {f"batched >= {TARGET_SPEEDUP}x unbatched (2D, paired, {device.type})":
                              best >= TARGET_SPEEDUP}}
    write_results(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
