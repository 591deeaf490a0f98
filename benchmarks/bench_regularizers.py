"""Time and memory of ``regularizers.elastic_energy`` (forward + backward) against a straightforward formulation.

Usage::

    python benchmarks/bench_regularizers.py [--shape 224 192 224] [--repeats 5] [--device cpu|cuda] [--threads N]
                                            [--quick]

Four variants: the fast implementation and the reference (each derivative computed separately with zero padding,
Python loop over all (i, j) pairs), each with scalar Lame parameters and with voxelwise maps ``[B, 1, *S]``.

Time: forward+backward passes, the variants interleaved round-robin in one process (fair under load from other
processes); wall time, plus user/system CPU time and minor page faults per pass (fresh memory from the OS can
dominate the wall time on CPU). On a shared machine ``--threads 1`` keeps OpenMP threads from waiting for a core
that another process holds.

Peak memory: on CPU each variant runs two passes in a fresh subprocess, after a warm-up on a tiny grid. The peak
resident size is reset through /proc/self/clear_refs once the inputs exist and read as VmHWM: the counter behind
``ru_maxrss``, which is reported too but also holds the parent's resident size inherited at exec. Reported with
its rise over the resident size at the reset. On CUDA: ``torch.cuda.max_memory_allocated`` above the inputs.
Prints a table and writes JSON to ``benchmarks/results/regularizers.json``. ``--quick``: shape 96x96x96 and 2
rounds unless given.

The reference functions are importable (the tests compare the fast implementation against them).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (MIB, add_common_args, format_table, machine_info, read_peak_memory,  # noqa: E402
                               resolve_benchmark_device, start_peak_memory, sync, write_results)
from hypermorph_spatially_adaptive.core.regularizers import elastic_energy, elastic_energy_reference  # noqa: E402

__all__ = ["main"]

VARIANTS = [("fast", "scalar"), ("fast", "voxelwise"), ("reference", "scalar"), ("reference", "voxelwise")]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "regularizers.json"
DEFAULT_SHAPE, QUICK_SHAPE = [224, 192, 224], [96, 96, 96]


# --- measurement ----------------------------------------------------------------------------------------------

def _inputs(shape: Sequence[int], batch: int, device: str) -> tuple[torch.Tensor, dict]:
    """A random velocity ``[B, ndim, *S]`` and both parameter forms (floats, voxelwise maps ``[B, 1, *S]``)."""
    torch.manual_seed(0)
    velocity = torch.randn(batch, len(shape), *shape, device=device).requires_grad_(True)
    lam_map = torch.rand(batch, 1, *shape, device=device)
    mu_map = torch.rand(batch, 1, *shape, device=device) * (1 - lam_map)
    return velocity, {"scalar": (0.3, 0.2), "voxelwise": (lam_map, mu_map)}


def _step(impl: str, velocity: torch.Tensor, lam, mu, device: str) -> dict:
    """One forward+backward pass: wall seconds, this process's user/system CPU seconds and minor page faults
    (fresh memory from the OS, which dominates on some virtual machines), and the energy."""
    energy = elastic_energy if impl == "fast" else elastic_energy_reference
    sync(device)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    loss = energy(velocity, lam, mu).mean()
    loss.backward()
    sync(device)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    velocity.grad = None
    return {"wall_s": elapsed, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt, "energy": float(loss.detach())}


def time_variants(shape: Sequence[int], batch: int, repeats: int, device: str) -> dict:
    """Median/min seconds of each variant. Variants run round-robin (order rotated every round) in one process,
    so that load from other processes on a shared machine affects all of them alike."""
    velocity, params = _inputs(shape, batch, device)
    steps = {variant: [] for variant in VARIANTS}
    energies = {}
    for impl, kind in VARIANTS:  # warm-up: allocator, thread pool, caches
        energies[(impl, kind)] = _step(impl, velocity, *params[kind], device)["energy"]
    for round_ in range(repeats):
        order = VARIANTS[round_ % len(VARIANTS):] + VARIANTS[:round_ % len(VARIANTS)]
        for impl, kind in order:
            steps[(impl, kind)].append(_step(impl, velocity, *params[kind], device))
    results = {}
    for (impl, kind), runs in steps.items():
        times = [run["wall_s"] for run in runs]
        results[f"{impl}_{kind}"] = {
            "times_s": times, "median_s": statistics.median(times), "min_s": min(times),
            "median_user_s": statistics.median(run["user_s"] for run in runs),
            "median_sys_s": statistics.median(run["sys_s"] for run in runs),
            "median_minor_faults": statistics.median(run["minor_faults"] for run in runs),
            "energy": energies[(impl, kind)],
        }
    return results


def peak_memory(impl: str, kind: str, shape: Sequence[int], batch: int, device: str) -> dict:
    """Peak memory of two forward+backward passes of one variant, in bytes, and its rise over the inputs.

    On CPU call it in a fresh process: the peak resident size is a property of the whole process."""
    # Warm up on a tiny grid first: the first passes page in library code and start threads, which would
    # otherwise count as the variant's memory.
    tiny_velocity, tiny_params = _inputs([8] * len(shape), batch, device)
    _step(impl, tiny_velocity, *tiny_params[kind], device)
    del tiny_velocity, tiny_params
    velocity, params = _inputs(shape, batch, device)
    lam, mu = params[kind]
    if kind == "scalar":
        del params  # the maps are not inputs of the scalar variant
    start = start_peak_memory(device)
    for _ in range(2):
        _step(impl, velocity, lam, mu, device)
    peak = read_peak_memory(start)
    if device == "cuda":
        return {"peak_bytes": peak["cuda_peak_bytes"], "peak_over_inputs_bytes": peak["cuda_peak_over_start_bytes"]}
    if not peak["rss_peak_was_reset"]:
        print("warning: could not reset the peak RSS; it includes the import of torch", file=sys.stderr)
    return {"peak_bytes": peak["rss_peak_bytes"], "peak_over_inputs_bytes": peak["rss_peak_over_start_bytes"],
            "ru_maxrss_bytes": peak["ru_maxrss_bytes"]}


def _child_peak_memory(args: argparse.Namespace, impl: str, kind: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", impl, kind, "--shape",
               *map(str, args.shape), "--batch", str(args.batch), "--device", "cpu",
               "--threads", str(args.threads)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {impl}/{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shape", type=int, nargs="+", default=None,
                        help=f"spatial shape (2 or 3 ints; default {DEFAULT_SHAPE}, with --quick {QUICK_SHAPE})")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed forward+backward passes per variant (default 5, with --quick 2)")
    add_common_args(parser, DEFAULT_OUT)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shape = args.shape or (QUICK_SHAPE if args.quick else DEFAULT_SHAPE)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if len(args.shape) not in (2, 3):
        parser.error(f"--shape needs 2 or 3 values, got {args.shape}")
    args.device = resolve_benchmark_device(parser, args).type  # the variants take "cpu" or "cuda"

    if args.child:
        print(json.dumps(peak_memory(*args.child, args.shape, args.batch, args.device)))
        return 0

    memory = {}
    for impl, kind in VARIANTS:  # before the timing, while this process is still small
        if args.device == "cpu":
            memory[f"{impl}_{kind}"] = _child_peak_memory(args, impl, kind)
        else:
            memory[f"{impl}_{kind}"] = peak_memory(impl, kind, args.shape, args.batch, "cuda")
    results = time_variants(args.shape, args.batch, args.repeats, args.device)
    for name, values in memory.items():
        results[name].update(values)

    ratios = {}
    for params in ("scalar", "voxelwise"):
        fast, ref = results[f"fast_{params}"], results[f"reference_{params}"]
        ratios[f"speedup_{params}"] = _ratio(ref["median_s"], fast["median_s"])
        ratios[f"user_cpu_speedup_{params}"] = _ratio(ref["median_user_s"], fast["median_user_s"])
        ratios[f"memory_fast_over_reference_{params}"] = _ratio(fast["peak_over_inputs_bytes"],
                                                                 ref["peak_over_inputs_bytes"])
        ratios[f"energy_relative_difference_{params}"] = abs(fast["energy"] - ref["energy"]) / abs(ref["energy"])
    ratios["voxelwise_over_scalar_time_fast"] = _ratio(results["fast_voxelwise"]["median_s"],
                                                       results["fast_scalar"]["median_s"])
    ratios["voxelwise_over_scalar_time_reference"] = _ratio(results["reference_voxelwise"]["median_s"],
                                                            results["reference_scalar"]["median_s"])
    targets = {
        "fast_at_least_2x_faster": min(ratios["speedup_scalar"], ratios["speedup_voxelwise"]) >= 2.0,
        "fast_lower_peak_memory": max(ratios["memory_fast_over_reference_scalar"],
                                      ratios["memory_fast_over_reference_voxelwise"]) < 1.0,
        "voxelwise_at_most_1.3x_scalar": ratios["voxelwise_over_scalar_time_fast"] <= 1.3,
    }

    print(f"elastic_energy forward+backward, shape {tuple(args.shape)}, batch {args.batch}, device {args.device}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved rounds")
    print(format_table(["variant", "median s", "min s", "user s", "sys s", "faults", "peak MiB", "over inputs MiB"],
                       [[name, r["median_s"], r["min_s"], r["median_user_s"], r["median_sys_s"],
                         int(r["median_minor_faults"]), r["peak_bytes"] / MIB, r["peak_over_inputs_bytes"] / MIB]
                        for name, r in results.items()], digits=(4, 4, 4, 3, 3, 0, 1, 1)))
    print(format_table(["ratio", "value"], [[name, f"{value:.4g}"] for name, value in ratios.items()]))
    print(format_table(["target", ""], [[name, "met" if met else "NOT met"] for name, met in targets.items()]))

    machine = machine_info(args.device)
    report = {
        "benchmark": "elastic_energy forward+backward", "machine": machine, "quick": args.quick,
        "shape": list(args.shape), "batch": args.batch, "repeats": args.repeats, "device": args.device,
        "device_name": machine["device_name"], "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": machine["cpu_count"],
        "memory_measure": "cuda max_memory_allocated" if args.device == "cuda"
        else "peak RSS (VmHWM, reset after the inputs; ru_maxrss kept for reference) per subprocess",
        "timing": "forward+backward, variants interleaved round-robin in one process after one warm-up pass each",
        "results": results, "ratios": ratios, "targets_met": targets,
    }
    write_results(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
