"""Helpers shared by the benchmark scripts: timing, peak memory, the machine description, a synthetic pair, cases in
child processes, JSON and tables.

Import from a script after putting the repository root on ``sys.path``: ``from benchmarks.common import ...``.
Every results file carries :func:`machine_info` under the key ``machine`` so that ``run_all.py`` can state where
the numbers were measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from hypermorph_spatially_adaptive.files import atomic_write_json
from hypermorph_spatially_adaptive.runtime import current_rss_bytes, peak_rss_bytes, reset_peak_rss, \
    resolve_device

__all__ = ["add_common_args", "parse_size", "shape_text", "parse_sized_args", "resolve_benchmark_device", "sync",
           "timed", "current_rss_bytes", "reset_peak_rss", "peak_rss_bytes", "start_peak_memory", "read_peak_memory",
           "cpu_model", "machine_info", "synthetic_pair", "run_child", "write_results", "format_table",
           "markdown_table", "MIB"]

MIB = 2 ** 20


# --- command line ---------------------------------------------------------------------------------------------

def add_common_args(parser: argparse.ArgumentParser, out: Path, threads: int = 0, device: str = "cpu") -> None:
    """The flags every benchmark takes (``run_all.py`` passes the first three): ``--quick``, ``--threads``,
    ``--device``, and ``--out`` (the JSON results file)."""
    parser.add_argument("--quick", action="store_true", help="smaller problem and fewer repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=threads, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default=device, help="auto, cpu or cuda[:N]")
    parser.add_argument("--out", type=Path, default=out, help="JSON results file")


def parse_size(text: str) -> tuple[int, ...]:
    """``"96"`` -> a 96^3 cube; ``"96x64x96"`` or ``"128x128"`` -> that shape (for ``--sizes``)."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N (a cube), HxW or DxHxW (ints), got {text!r}") from None
    shape = shape * 3 if len(shape) == 1 else shape
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise argparse.ArgumentTypeError(f"size must have 2 or 3 axes of >= 2 voxels, got {text!r}")
    return shape


def shape_text(shape: Sequence[int]) -> str:
    """``(96, 64, 96)`` -> ``"96x64x96"``."""
    return "x".join(map(str, shape))


def parse_sized_args(description: str, out: Path, default_sizes: Sequence[tuple[int, ...]],
                     quick_sizes: Sequence[tuple[int, ...]], argv: Sequence[str] | None
                     ) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Flags of a benchmark over image sizes that measures each size in a child process: the common flags plus
    ``--sizes``, ``--repeats`` (default 3, 1 with ``--quick``) and the hidden ``--child``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, out, threads=2)
    sizes = " ".join(map(shape_text, default_sizes))
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None,
                        help=f"sizes: N for a cube, HxW or DxHxW (default {sizes}; --quick "
                             f"{' '.join(map(shape_text, quick_sizes))})")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 3, --quick 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or list(quick_sizes if args.quick else default_sizes)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return parser, args


def resolve_benchmark_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and resolve ``--device`` (a parser error for an unknown or unavailable device)."""
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))


# --- time -----------------------------------------------------------------------------------------------------

def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so that wall time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    """``(wall seconds, fn())``, with CUDA synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


# --- memory ---------------------------------------------------------------------------------------------------

def start_peak_memory(device: torch.device | str) -> dict[str, Any]:
    """Reset the peak counters (RSS; CUDA allocations on a CUDA device) and note the current levels.

    The peak RSS is a property of the whole process: measure one case per fresh process, after a warm-up that
    pages in library code and starts the threads."""
    device = torch.device(device)
    sync(device)
    start: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start["cuda_bytes"] = torch.cuda.memory_allocated(device)
    start["rss_reset"] = reset_peak_rss()
    start["rss_bytes"] = current_rss_bytes()
    return start


def read_peak_memory(start: dict[str, Any]) -> dict[str, Any]:
    """Peaks since :func:`start_peak_memory`, in bytes, with their rise over the levels at the start.

    ``rss_peak_bytes`` is VmHWM; without a reset (old kernels) it falls back to ``ru_maxrss``, which also holds the
    resident size inherited from the parent at exec. ``cuda_peak_bytes`` is ``torch.cuda.max_memory_allocated``."""
    sync(start["device"])
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    hwm = peak_rss_bytes()
    peak = hwm if hwm is not None and start["rss_reset"] else maxrss
    result = {"rss_peak_bytes": peak, "rss_peak_over_start_bytes": peak - start["rss_bytes"],
              "ru_maxrss_bytes": maxrss, "rss_peak_was_reset": start["rss_reset"]}
    if torch.device(start["device"]).type == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated(start["device"])
        result.update(cuda_peak_bytes=cuda_peak, cuda_peak_over_start_bytes=cuda_peak - start["cuda_bytes"])
    return result


# --- machine --------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """Where and when the numbers come from: CPU model, cores, torch threads, memory, torch version, device, the
    load average when the benchmark started (other processes on a shared machine slow it down) and the UTC date."""
    device = torch.device(device)
    info = {
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "memory_total_bytes": _memory_total_bytes(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "device_name": cpu_model(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


# --- inputs and child processes -------------------------------------------------------------------------------

def synthetic_pair(shape: Sequence[int], num_classes: int = 5, keypoints: int = 100, seed: int = 0) -> dict[str, Any]:
    """A dataset item (see :mod:`hypermorph_spatially_adaptive.data.registry`) for timing: random images
    ``[1, *S]``, ``num_classes`` concentric label shells around the centre (the moving ones shifted by one voxel
    along axis 0), ``keypoints`` random keypoints (the moving ones half a voxel off), 1.5 mm voxels, pair id
    ``bench``."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    radius = torch.stack(torch.meshgrid(*axes, indexing="ij")).norm(dim=0) / (min(shape) / 2)
    labels = (num_classes - 1 - (radius * num_classes).floor()).clamp(0, num_classes - 1).long()[None]
    fixed_points = torch.rand(keypoints, len(shape), generator=g) * (torch.tensor(shape) - 1)
    return {"fixed": torch.rand(1, *shape, generator=g), "moving": torch.rand(1, *shape, generator=g),
            "fixed_labels": labels, "moving_labels": labels.roll(1, dims=1),
            "fixed_keypoints": fixed_points, "moving_keypoints": fixed_points + 0.5,
            "spacing": torch.full((len(shape),), 1.5, dtype=torch.float64),
            "affine": torch.diag(torch.tensor([1.5] * len(shape) + [1.0] * (4 - len(shape)), dtype=torch.float64)),
            "pair_id": "bench"}


def run_child(script: str | Path, spec: Any, shape: Sequence[int], case: dict[str, Any], args: argparse.Namespace,
              device: torch.device, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Measure one case in a fresh process (so that memory peaks do not mix): ``script --child JSON(spec) --device
    D --threads N *extra``, which prints its result dict as JSON on its last line.

    Returns ``{"shape", "voxels", **case}`` updated with that dict, or with ``error`` (the child's last stderr line)
    when it failed, e.g. out of memory at the largest size: the other cases are kept."""
    command = [sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec), "--device", str(device),
               "--threads", str(args.threads), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    record = {"shape": list(shape), "voxels": math.prod(shape), **case}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        name = " ".join([str(value) for value in case.values()] + [shape_text(shape)])
        print(f"  {name} failed: {tail}", file=sys.stderr)
        return {**record, "error": tail}
    return {**record, **json.loads(proc.stdout.strip().splitlines()[-1])}


# --- output ---------------------------------------------------------------------------------------------------

def write_results(report: dict[str, Any], path: Path) -> None:
    """Write a results dict as indented JSON, atomically, and say where."""
    atomic_write_json(report, path)
    print(f"wrote {path}")


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}" if value == value else "nan"
    return "-" if value is None else str(value)


def _cells(row: Sequence[Any], digits: int | Sequence[int]) -> list[str]:
    per_column = [digits] * len(row) if isinstance(digits, int) else list(digits)
    return [_cell(v, d) for v, d in zip(row, per_column)]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | Sequence[int] = 3) -> str:
    """A plain-text table for the console: first column left-aligned, the others right-aligned. ``digits``:
    decimals of float cells, one for all columns or one per column."""
    cells = [list(headers)] + [_cells(row, digits) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | Sequence[int] = 3) -> str:
    """A GitHub-flavoured markdown table; numeric columns right-aligned; ``digits`` as in :func:`format_table`."""
    body = [_cells(row, digits) for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
               and any(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
