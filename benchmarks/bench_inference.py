"""Inference cost per pair: registration (forward + integration), scoring, writing the outputs, peak memory.

Usage::

    python benchmarks/bench_inference.py [--quick] [--sizes 128x128 64 96] [--repeats 3] [--threads 2] [--device cpu]

Per size, in a fresh subprocess: the spatially adaptive ``HyperVxmDense`` (5 classes, P = 10, default widths:
encoder 16 32 32 32, decoder 32 32 32 32 32 16 16, 7 integration steps, hypernetwork 6 x 128; untrained) on a
synthetic pair (random images, 5-class concentric label shells, 100 keypoints) as ``inference.py`` runs it:

- ``register``: ``inference.register`` (forward, integration, warp; the ``runtime_s`` of metrics.csv);
- ``score``: ``inference.score_pair`` (Dice, TRE, SDlogJ, folding, warped labels, Jacobian map) without and with
  HD95;
- ``write``: ``inference.write_outputs`` (four .nii.gz volumes).

A warm-up on a 16-voxel grid comes first; then the peak counters are reset, one untimed registration runs at full
size and ``--repeats`` timed rounds follow (medians reported). Peak memory: resident size (VmHWM) on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. Prints a table and writes ``benchmarks/results/inference.json``.
Defaults: 2D 128x128, 3D 64^3 and 96^3, 3 repeats; ``--quick``: 128x128 and 64^3, 1 repeat.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (MIB, format_table, machine_info, parse_sized_args,  # noqa: E402
                               read_peak_memory, resolve_benchmark_device, run_child, shape_text, start_peak_memory,
                               synthetic_pair, timed, write_results)
from hypermorph_spatially_adaptive import HyperVxmDense  # noqa: E402
from hypermorph_spatially_adaptive.stages.inference.pairs import register, score_pair, write_outputs  # noqa: E402

__all__ = ["measure_size", "main"]

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "inference.json"
DEFAULT_SIZES = ((128, 128), (64, 64, 64), (96, 96, 96))
QUICK_SIZES = ((128, 128), (64, 64, 64))
CLASSES = ("background", "soft_tissue", "lung", "bone", "liver")
KEYPOINTS = 100
#: What the report says of the model (the rest of its config is the size and the parameter count).
MODEL_KEYS = ("enc_features", "dec_features", "int_steps", "hyper_layers", "hyper_units")
WARMUP_EDGE = 16


def measure_size(shape: Sequence[int], repeats: int, device: torch.device) -> dict[str, Any]:
    """Medians of the three stages and the peak memory at one size; call in a fresh process."""
    torch.manual_seed(0)
    model = HyperVxmDense(list(shape), 2 * len(CLASSES)).to(device).eval()
    hyper = torch.full((1, 2 * len(CLASSES)), 0.2)
    register(model, synthetic_pair([WARMUP_EDGE] * len(shape), len(CLASSES), KEYPOINTS), hyper, device)
    item = synthetic_pair(shape, len(CLASSES), KEYPOINTS)
    start = start_peak_memory(device)
    register(model, item, hyper, device)  # untimed: first touch of this size's memory
    times: dict[str, list[float]] = {"register_s": [], "score_s": [], "score_hd95_s": [], "write_s": []}
    with tempfile.TemporaryDirectory() as folder:
        paths = {kind: Path(folder) / f"{kind}_bench.nii.gz" for kind in ("warped", "disp", "jacdet", "warped_labels")}
        for _ in range(repeats):
            warped, displacement, seconds = register(model, item, hyper, device)
            times["register_s"].append(seconds)
            for key, hd95 in (("score_s", False), ("score_hd95_s", True)):
                elapsed, result = timed(lambda: score_pair(item, "tissue_population", warped, displacement, seconds,
                                                           "population", CLASSES, hd95), device)
                times[key].append(elapsed)
            times["write_s"].append(timed(lambda: write_outputs(paths, result, item["affine"]), device)[0])
    peak = read_peak_memory(start)
    return {**{key: statistics.median(values) for key, values in times.items()},
            "register_min_s": min(times["register_s"]), "times_s": times, **peak,
            "parameters": sum(p.numel() for p in model.parameters())}


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_sized_args(__doc__.split("\n\n")[0], DEFAULT_OUT, DEFAULT_SIZES, QUICK_SIZES, argv)
    device = resolve_benchmark_device(parser, args)
    if args.child:
        print(json.dumps(measure_size(tuple(json.loads(args.child)), args.repeats, device)))
        return 0
    started = time.perf_counter()
    machine = machine_info(device)
    memory_key = "cuda_peak_bytes" if device.type == "cuda" else "rss_peak_bytes"
    print(f"device {device}; {torch.get_num_threads()} threads; torch {torch.__version__}; {args.repeats} timed "
          f"round(s) per size; load average {machine['load_average_1min']}")
    results = [run_child(__file__, list(shape), shape, {}, args, device, extra=("--repeats", str(args.repeats)))
               for shape in args.sizes]
    config = HyperVxmDense([WARMUP_EDGE] * 2, 2 * len(CLASSES)).config  # the children's widths (sizes aside)
    rows = [[shape_text(r["shape"]), r.get("register_s"), r.get("register_min_s"), r.get("score_s"),
             r.get("score_hd95_s"), r.get("write_s"), r[memory_key] / MIB if memory_key in r else None]
            for r in results]
    print(format_table(["shape", "register s", "min s", "score s", "score+HD95 s", "write s", "peak MiB"], rows))
    report = {
        "benchmark": "inference per pair: register (forward + integration), score, write outputs",
        "machine": machine, "device": str(device), "threads": torch.get_num_threads(), "quick": args.quick,
        "repeats": args.repeats, "num_classes": len(CLASSES), "keypoints": KEYPOINTS,
        "model": {**{key: config[key] for key in MODEL_KEYS}, "trained": False},
        "memory_measure": "cuda max_memory_allocated" if device.type == "cuda"
        else "peak RSS (VmHWM) per subprocess, reset after a warm-up on a 16-voxel grid",
        "memory_key": memory_key, "results": results, "elapsed_s": time.perf_counter() - started,
    }
    write_results(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
