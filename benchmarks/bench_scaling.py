"""Time and peak memory of one training step and one inference against image size, extrapolated to NLST.

Usage::

    python benchmarks/bench_scaling.py [--quick] [--sizes 64 96 128] [--repeats 3] [--threads 2] [--device cpu]

Training step: forward, loss (NCC weighted by ``1 - lam(x) - mu(x)`` + elastic energy with voxelwise Lame maps
from 5-class labels, ``objective.registration_loss``), backward, fused Adam step; batch 1. Inference: forward with
integration and warping under ``torch.no_grad``. Models: the spatially adaptive ``HyperVxmDense`` (P = 10) and a
plain ``VxmDense`` of the same widths (encoder 16 32 32 32, decoder 32 32 32 32 32 16 16, 7 integration steps;
hypernetwork 6 x 128), the plain one trained with the same loss.

Each (size, model, phase) runs in a fresh subprocess so that memory peaks do not mix: a warm-up on a 16-voxel grid
(pages in library code, starts threads, creates the Adam state), then the peak counters are reset, then one
untimed step at full size and ``--repeats`` timed ones. Peak memory is the peak resident size (VmHWM) on CPU and
``torch.cuda.max_memory_allocated`` on CUDA. Besides wall time, the CPU time of all threads per step (user +
system) is recorded: on a shared machine it is less disturbed by other processes. Time and peak memory are
fitted as ``a * voxels + b`` by least squares and extrapolated to the NLST size 224x192x224, with the fit's
residuals at the measured sizes.

Also the time per training step at 2D 128x128 and 3D 64^3, global (P = 2) and spatial models.
Prints tables and writes ``benchmarks/results/scaling.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (MIB, format_table, machine_info, parse_size, parse_sized_args,  # noqa: E402
                               read_peak_memory, resolve_benchmark_device, run_child, shape_text, start_peak_memory,
                               timed, write_results)
from hypermorph_spatially_adaptive import HyperVxmDense, VxmDense, sample_hyperparams  # noqa: E402
from hypermorph_spatially_adaptive.core.objective import registration_loss  # noqa: E402

__all__ = ["LinearFit", "fit_linear", "fits", "parse_size", "measure_case", "main"]

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scaling.json"
DEFAULT_SIZES = ((64, 64, 64), (96, 96, 96), (128, 128, 128))
QUICK_SIZES = ((64, 64, 64), (96, 96, 96))
NLST_SHAPE = (224, 192, 224)
NUM_CLASSES = 5
TRAIN_STEP_SHAPES = ((128, 128), (64, 64, 64))
WARMUP_EDGE = 16  # the U-Net's size multiple: the smallest grid that runs every layer unpadded


class LinearFit(NamedTuple):
    """``y ~ slope * x + intercept`` with the residuals ``y - fit(x)`` at the fitted points."""

    slope: float
    intercept: float
    residuals: tuple[float, ...]

    def predict(self, x: float) -> float:
        return self.slope * x + self.intercept


def fit_linear(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Least-squares line through the points ``(x_i, y_i)``; needs two or more distinct x."""
    if len(x) != len(y) or len(set(x)) < 2:
        raise ValueError(f"fit_linear needs paired x, y with at least two distinct x, got x={list(x)}, y={list(y)}")
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    slope = (sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
             / sum((a - mean_x) ** 2 for a in x))
    intercept = mean_y - slope * mean_x
    return LinearFit(slope, intercept, tuple(b - (slope * a + intercept) for a, b in zip(x, y)))



# --- one case (runs in a child process) -----------------------------------------------------------------------

def _inputs(shape: Sequence[int], num_classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random images ``[1, 1, *S]``, labels in bands along the first axis ``[1, 1, *S]`` and a parameter vector."""
    g = torch.Generator().manual_seed(0)
    bands = (torch.arange(shape[0]) * num_classes // shape[0]).view(1, 1, -1, *([1] * (len(shape) - 1)))
    return {"moving": torch.rand(1, 1, *shape, generator=g).to(device),
            "fixed": torch.rand(1, 1, *shape, generator=g).to(device),
            "labels": bands.expand(1, 1, *shape).contiguous().to(device),
            "hyper": sample_hyperparams(1, num_classes, endpoint_prob=0.0, generator=g).to(device)}


def _step(model: torch.nn.Module, phase: str, num_classes: int, optimizer: torch.optim.Optimizer | None):
    """A function ``inputs -> None`` running one training step or one inference."""
    is_hyper = isinstance(model, HyperVxmDense)

    def forward(x: dict[str, torch.Tensor]):
        return model(x["moving"], x["fixed"], x["hyper"]) if is_hyper else model(x["moving"], x["fixed"])

    def train(x: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = forward(x)
        terms = registration_loss(x["fixed"], out.warped, out.velocity, x["hyper"], num_classes=num_classes,
                                  labels=x["labels"] if num_classes > 1 else None)
        terms.total.backward()
        optimizer.step()

    def infer(x: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            forward(x)

    return train if phase == "train" else infer


def measure_case(shape: Sequence[int], model_kind: str, phase: str, num_classes: int, repeats: int,
                 device: torch.device) -> dict[str, Any]:
    """Seconds per step (all repeats, median, min) and peak memory of one case; call in a fresh process."""
    torch.manual_seed(0)
    if model_kind == "hyper":
        model = HyperVxmDense(shape, 2 * num_classes).to(device)
    else:
        model = VxmDense(shape).to(device)
    model.train(phase == "train")
    optimizer = (torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
                 if phase == "train" else None)
    step = _step(model, phase, num_classes, optimizer)
    step(_inputs([WARMUP_EDGE] * len(shape), num_classes, device))
    inputs = _inputs(shape, num_classes, device)
    start = start_peak_memory(device)
    step(inputs)  # untimed: first touch of this size's memory
    times, cpu_times = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        times.append(timed(lambda: step(inputs), device)[0])
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_times.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    # CPU seconds of all threads: less sensitive than wall time to other processes holding the cores.
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "median_cpu_s": statistics.median(cpu_times), "cpu_times_s": cpu_times,
            **read_peak_memory(start), "parameters": sum(p.numel() for p in model.parameters())}


# --- the parent: cases in subprocesses, fits, tables ----------------------------------------------------------

class Case(NamedTuple):
    shape: tuple[int, ...]
    model: str  # "hyper" | "plain"
    phase: str  # "train" | "infer"
    classes: int  # 5: spatially adaptive (voxelwise maps), 1: global


def _run_child(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    spec = {"shape": list(case.shape), "model": case.model, "phase": case.phase, "classes": case.classes,
            "repeats": args.repeats}
    return run_child(__file__, spec, case.shape, {"model": case.model, "phase": case.phase, "classes": case.classes},
                     args, device)


def fits(records: Sequence[dict[str, Any]], memory_key: str, target_voxels: int) -> dict[str, Any]:
    """Per model and phase: ``a * voxels + b`` fits of the median time and the peak memory, and their value at
    ``target_voxels``."""
    result = {}
    for model in ("hyper", "plain"):
        for phase in ("train", "infer"):
            points = [r for r in records if r["model"] == model and r["phase"] == phase and "error" not in r]
            if len({r["voxels"] for r in points}) < 2:
                continue
            voxels = [r["voxels"] for r in points]
            entry = {"voxels": voxels}
            for name, key in (("time_s", "median_s"), ("memory_bytes", memory_key)):
                values = [r[key] for r in points]
                line = fit_linear(voxels, values)
                entry[name] = {"slope_per_voxel": line.slope, "intercept": line.intercept, "values": values,
                               "residuals": list(line.residuals),
                               "relative_residuals": [e / v for e, v in zip(line.residuals, values)],
                               "extrapolated": line.predict(target_voxels)}
            result[f"{model}_{phase}"] = entry
    return result


def _print_tables(records, fitted, train_steps, memory_key: str) -> None:
    rows = []
    for r in records:
        if "error" in r:
            rows.append([shape_text(r["shape"]), r["model"], r["phase"], "failed", None, None, None, None])
            continue
        rows.append([shape_text(r["shape"]), r["model"], r["phase"], r["median_s"], r["min_s"], r["median_cpu_s"],
                     r[memory_key] / MIB, r[memory_key.replace("_peak_bytes", "_peak_over_start_bytes")] / MIB])
    print(format_table(["shape", "model", "phase", "median s", "min s", "cpu s", "peak MiB", "over start MiB"], rows,
                       digits=(0, 0, 0, 3, 3, 3, 0, 0)))
    print(f"\nfit a * voxels + b, extrapolated to {shape_text(NLST_SHAPE)}:")
    rows = []
    for name, entry in fitted.items():
        t, m = entry["time_s"], entry["memory_bytes"]
        rows.append([name, t["slope_per_voxel"] * 1e6, t["intercept"], max(map(abs, t["relative_residuals"])),
                     t["extrapolated"], m["slope_per_voxel"] * 1e6 / MIB, m["intercept"] / MIB,
                     max(map(abs, m["relative_residuals"])), m["extrapolated"] / MIB])
    print(format_table(["case", "s/Mvox", "s at 0", "max rel res", "NLST s", "MiB/Mvox", "MiB at 0",
                        "max rel res", "NLST MiB"], rows, digits=(0, 3, 3, 3, 1, 0, 0, 3, 0)))
    print("\ntraining step:")
    print(format_table(["shape", "model", "median s", "min s", "cpu s"],
                       [[shape_text(r["shape"]), r["model_type"], r.get("median_s"), r.get("min_s"),
                         r.get("median_cpu_s")] for r in train_steps]))


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_sized_args(__doc__.split("\n\n")[0], DEFAULT_OUT, DEFAULT_SIZES, QUICK_SIZES, argv)
    device = resolve_benchmark_device(parser, args)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure_case(tuple(spec["shape"]), spec["model"], spec["phase"], spec["classes"],
                                      spec["repeats"], device)))
        return 0

    started = time.perf_counter()
    machine = machine_info(device)
    memory_key = "cuda_peak_bytes" if device.type == "cuda" else "rss_peak_bytes"
    print(f"device {device}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"{args.repeats} timed steps per case; load average {machine['load_average_1min']}")
    measured: dict[Case, dict[str, Any]] = {}

    def measure(case: Case) -> dict[str, Any]:
        if case not in measured:
            measured[case] = _run_child(case, args, device)
        return measured[case]

    records = [measure(Case(tuple(shape), model, phase, NUM_CLASSES))
               for shape in args.sizes for model in ("hyper", "plain") for phase in ("train", "infer")]
    train_steps = [{**measure(Case(shape, "hyper", "train", classes)), "model_type": model_type}
                   for shape in TRAIN_STEP_SHAPES for model_type, classes in (("global", 1), ("spatial", NUM_CLASSES))]
    target = math.prod(NLST_SHAPE)
    fitted = fits([r for r in records if len(r["shape"]) == 3], memory_key, target)
    _print_tables(records, fitted, train_steps, memory_key)

    report = {
        "benchmark": "scaling of one training step and one inference with image size",
        "machine": machine, "device": str(device), "threads": torch.get_num_threads(), "quick": args.quick,
        "repeats": args.repeats, "batch": 1, "num_classes": NUM_CLASSES,
        "model": {"enc_features": [16, 32, 32, 32], "dec_features": [32, 32, 32, 32, 32, 16, 16], "int_steps": 7,
                  "hyper_layers": 6, "hyper_units": 128},
        "train_step": "forward, NCC weighted by 1 - lam(x) - mu(x) + elastic energy with voxelwise Lame maps "
                      "(5 classes), backward, fused Adam step",
        "inference": "forward with integration and warping, torch.no_grad",
        "memory_measure": "cuda max_memory_allocated" if device.type == "cuda"
        else "peak RSS (VmHWM) per subprocess, reset after a warm-up on a 16-voxel grid",
        "memory_key": memory_key, "results": records,
        "extrapolation": {"shape": list(NLST_SHAPE), "voxels": target, "fits": fitted},
        "train_step_times": train_steps, "elapsed_s": time.perf_counter() - started,
    }
    write_results(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
