#!/usr/bin/env python
"""Training speed on a shared CPU: global-model training steps per second alone and next to one other CPU-bound
PyTorch process, with the OpenMP runtime's wait policy as torch starts it and as the package starts it.

Usage::

    python benchmarks/bench_contention.py [--seconds 4] [--threads 0] [--quick]

Each measurement is a fresh process that runs the training step of ``bench_training_step.py`` (the demo's 2D global
model, 64x64, batch 4) for ``--seconds`` after a short warm-up and reports steps per second; "contended" runs it
while another process multiplies matrices with torch's default threads (one CPU-bound PyTorch process, started
first). Two starts of the measured process:

- ``spin`` (the code before the fix): torch imported before the package, so its OpenMP runtime starts with its
  default policy, whose idle threads spin for a while at every parallel region's end;
- ``passive`` (the package's default): the package sets ``OMP_WAIT_POLICY=PASSIVE`` before it imports torch, so
  idle threads sleep and leave the core to whoever needs it.

The competitor always uses torch's default start. The load average when the benchmark started is recorded: other
users of the machine slow every number down alike. Prints one line per case and writes
``benchmarks/results/contention.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["STARTS", "measure", "main"]

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "contention.json"
#: How the measured process starts its OpenMP runtime (see the module docstring).
STARTS = ("spin", "passive")


def _child(start: str, seconds: float, threads: int) -> dict:
    """Steps per second of the global training step, started as ``start``; runs in its own process."""
    policy = os.environ.get("OMP_WAIT_POLICY", "PASSIVE" if start == "passive" else "torch's default")
    if start == "spin":
        import torch  # noqa: F401 - first: the OpenMP runtime starts before the package could set its policy
    from benchmarks import bench_training_step as bench
    from hypermorph_spatially_adaptive.core.objective import sample_training_hyperparams
    from hypermorph_spatially_adaptive.models.networks import HyperVxmDense
    from hypermorph_spatially_adaptive.runtime import DistributedContext
    from hypermorph_spatially_adaptive.stages.training.step import LossOptions, training_network, training_step
    import contextlib

    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = HyperVxmDense(bench.SHAPE, 2, **bench.WIDTHS).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    network = training_network(model, DistributedContext(), torch.device("cpu"))
    options, batch = LossOptions("elastic", 1, "fixed_labels", 9), bench.synthetic_batch()
    spacing = (2.0, 2.0)
    generator = torch.Generator()

    def step() -> None:
        hyper = sample_training_hyperparams(bench.BATCH, 1, "elastic", generator=generator)
        training_step(network, optimizer, batch, hyper, spacing, options, contextlib.nullcontext())

    for _ in range(3):
        step()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    return {"steps_per_s": steps / (time.perf_counter() - started), "threads": torch.get_num_threads(),
            "omp_wait_policy": policy}


_COMPETITOR = ("import torch\n"
               "a = torch.rand(384, 384)\n"
               "while True:\n"
               "    a = (a @ a).clamp_(0, 1)\n")


def _environment() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def measure(start: str, contended: bool, seconds: float, threads: int) -> dict:
    """One case in fresh processes: the measured one (``start``), with a competitor when ``contended``."""
    competitor = None
    if contended:
        competitor = subprocess.Popen([sys.executable, "-c", _COMPETITOR], env=_environment())
        time.sleep(1.0)  # its threads are running before the measurement starts
    try:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", start, "--seconds", str(seconds),
                   "--threads", str(threads)]
        proc = subprocess.run(command, capture_output=True, text=True, env=_environment(), check=True)
    finally:
        if competitor is not None:
            competitor.terminate()
            competitor.wait()
    return {"start": start, "contended": contended, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter measurements (a smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads of the measured process (0: "
                                                               "torch's default, as a training run)")
    parser.add_argument("--device", default="cpu", help="cpu only (the contention is for CPU cores)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per case")
    parser.add_argument("--child", choices=STARTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.seconds, args.threads)))
        return 0
    if args.device != "cpu":
        parser.error("--device: the contention benchmark measures CPU cores only")
    if args.quick:
        args.seconds = 1.0
    from benchmarks.common import machine_info, write_results

    machine, load_at_start = machine_info("cpu"), list(os.getloadavg())
    results = [measure(start, contended, args.seconds, args.threads) for start in STARTS
               for contended in (False, True)]
    load_at_end = list(os.getloadavg())
    for start in STARTS:
        solo, shared = (next(r for r in results if r["start"] == start and r["contended"] is c) for c in (False, True))
        solo["kept_fraction"] = shared["kept_fraction"] = shared["steps_per_s"] / solo["steps_per_s"]
        print(f"{start}: {solo['steps_per_s']:.2f} steps/s alone, {shared['steps_per_s']:.2f} next to one CPU-bound "
              f"PyTorch process ({100 * shared['kept_fraction']:.0f}% kept), {solo['threads']} threads")
    write_results({"benchmark": "global training steps per second alone and next to one CPU-bound process",
                   "machine": machine, "seconds_per_case": args.seconds,
                   "load_average_at_start": load_at_start, "load_average_at_end": load_at_end, "results": results},
                  args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
