"""Time and memory of ``regularizers.elastic_energy`` (forward + backward) against a straightforward formulation.

Usage::

    python benchmarks/bench_regularizers.py [--shape 224 192 224] [--repeats 5] [--device cpu|cuda] [--threads N]

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
Prints a table and writes JSON to ``benchmarks/results/regularizers.json``.

The reference functions are importable (the tests compare the fast implementation against them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from regularizers import elastic_energy  # noqa: E402

__all__ = ["reference_elastic_energy", "reference_diffusion_energy", "main"]

VARIANTS = [("fast", "scalar"), ("fast", "voxelwise"), ("reference", "scalar"), ("reference", "voxelwise")]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "regularizers.json"


# --- straightforward formulation (also the test oracle) -------------------------------------------------------

def _padded_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x[i + 1] - x[i]`` along ``dim``, zero-padded at the last index (same shape as ``x``)."""
    n = x.shape[dim]
    diff = x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)
    pad = [0, 0] * (x.dim() - dim)
    pad[-1] = 1  # F.pad lists the last dimension first, so the final entry is the far end of `dim`
    return F.pad(diff, pad)


def _broadcastable(param, ndim: int):
    """A float stays a float; a per-sample tensor ``[B]`` becomes ``[B, 1, 1, ...]``; a map is kept."""
    if isinstance(param, torch.Tensor) and param.dim() == 1:
        return param.view(-1, *([1] * (ndim + 1)))
    return param


def _derivative(velocity: torch.Tensor, component: int, axis: int, spacing: Sequence[float]) -> torch.Tensor:
    """d v_component / d x_axis ``[B, 1, *S]`` in mm per mm (voxels without spacing)."""
    scale = spacing[component] / spacing[axis]
    return _padded_difference(velocity[:, component:component + 1], 2 + axis) * scale


def reference_elastic_energy(velocity: torch.Tensor, lam, mu, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Per-voxel ``lam/2 (div v)^2 + mu/4 sum_ij (d_i v_j + d_j v_i)^2`` ``[B, 1, *S]``, written term by term."""
    ndim = velocity.dim() - 2
    spacing = tuple(spacing) if spacing is not None else (1.0,) * ndim
    div = sum(_derivative(velocity, k, k, spacing) for k in range(ndim))
    strain = sum((_derivative(velocity, j, i, spacing) + _derivative(velocity, i, j, spacing)) ** 2
                 for i in range(ndim) for j in range(ndim))
    return _broadcastable(lam, ndim) / 2 * div ** 2 + _broadcastable(mu, ndim) / 4 * strain


def reference_diffusion_energy(velocity: torch.Tensor, weight, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Per-voxel ``weight * sum_a sum_k (d_a v_k)^2`` ``[B, 1, *S]``, written term by term."""
    ndim = velocity.dim() - 2
    spacing = tuple(spacing) if spacing is not None else (1.0,) * ndim
    total = sum(_derivative(velocity, k, a, spacing) ** 2 for a in range(ndim) for k in range(ndim))
    return _broadcastable(weight, ndim) * total


# --- measurement ----------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0), so ru_maxrss excludes the import of torch; False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    """VmHWM of /proc/self/status (peak resident size since the last reset), or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
    energy = elastic_energy if impl == "fast" else reference_elastic_energy
    _sync(device)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    loss = energy(velocity, lam, mu).mean()
    loss.backward()
    _sync(device)
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
    _sync(device)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        peak_reset = _reset_peak_rss()
        base = _current_rss_bytes()
    for _ in range(2):
        _step(impl, velocity, lam, mu, device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        # ru_maxrss is also raised to the parent's resident size at exec; VmHWM is this process's own peak.
        hwm = _peak_rss_bytes()
        peak = hwm if hwm is not None and peak_reset else maxrss
        if not peak_reset:
            print("warning: could not reset the peak RSS; it includes the import of torch", file=sys.stderr)
        return {"peak_bytes": peak, "peak_over_inputs_bytes": peak - base, "ru_maxrss_bytes": maxrss}
    return {"peak_bytes": peak, "peak_over_inputs_bytes": peak - base}


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
    parser.add_argument("--shape", type=int, nargs="+", default=[224, 192, 224], help="spatial shape (2 or 3 ints)")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward+backward passes per variant")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.shape) not in (2, 3):
        parser.error(f"--shape needs 2 or 3 values, got {args.shape}")

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(peak_memory(*args.child, args.shape, args.batch, args.device)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")

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
    print(f"{'variant':<22}{'median s':>10}{'min s':>10}{'user s':>9}{'sys s':>9}{'faults':>10}{'peak MiB':>10}"
          f"{'over inputs MiB':>17}")
    for name, r in results.items():
        print(f"{name:<22}{r['median_s']:>10.4f}{r['min_s']:>10.4f}{r['median_user_s']:>9.3f}"
              f"{r['median_sys_s']:>9.3f}{r['median_minor_faults']:>10.0f}{r['peak_bytes'] / 2**20:>10.1f}"
              f"{r['peak_over_inputs_bytes'] / 2**20:>17.1f}")
    for name, value in ratios.items():
        print(f"{name:<40}{value:.4g}")
    for name, met in targets.items():
        print(f"{name:<40}{'met' if met else 'NOT met'}")

    report = {
        "benchmark": "elastic_energy forward+backward", "shape": list(args.shape), "batch": args.batch,
        "repeats": args.repeats, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "memory_measure": "cuda max_memory_allocated" if args.device == "cuda"
        else "peak RSS (VmHWM, reset after the inputs; ru_maxrss kept for reference) per subprocess",
        "timing": "forward+backward, variants interleaved round-robin in one process after one warm-up pass each",
        "results": results, "ratios": ratios, "targets_met": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
