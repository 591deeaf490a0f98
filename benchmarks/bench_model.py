"""Training-step time of HyperVxmDense against a plain VoxelMorph U-Net of the same widths.

Usage::

    python benchmarks/bench_model.py [--device cpu] [--repeats 3] [--processes 3] [--size-2d 192 192]
                                     [--size-3d 96 64 96] [--cases 2d_b1 2d_b4 3d_b1] [--alternatives] [--quick]
                                     [--threads N]

One step = forward, loss (``objective.registration_loss`` of the global model: NCC weighted by ``1 - lam - mu``
per sample + ``regularizers.elastic_energy`` of the velocity with per-sample lam, mu), backward, Adam step.
Cases: ``2d_b1`` (2D, batch 1), ``2d_b4`` (2D, batch 4, a different parameter vector per sample: the
grouped-convolution path), ``2d_b4_shared`` (batch 4, one vector for all: the shared-kernel path), ``3d_b1``. The
hyper and plain models (default widths, 7 integration steps) run round-robin in one process, so load from other
processes affects both alike; the median over
``--repeats`` steps (after ``--warmup``) is reported, with the minimum (least disturbed by other processes) and
the median of the per-round ratios hyper/plain ("paired"). On a shared machine the ratio also changes from one
process to the next (memory placement, neighbours), so each case runs in ``--processes`` fresh processes and the
reported figures are medians over them, with every process's paired ratio kept (``--processes 1``: in this
process).
Adam is the fused implementation by default (``--adam foreach`` for torch's default one): the hyper model has
~14M (2D) / ~42M (3D) parameters, mostly the kernel heads, and foreach Adam's temporaries dominate its step on
CPU. ``--alternatives`` also times the batched cases with the hyper-convolutions run as a Python loop over
samples instead of one grouped convolution. ``--quick``: one timed step per variant unless ``--repeats`` is given.
Prints a table and writes JSON to ``benchmarks/results/model.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (add_common_args, format_table, machine_info, resolve_benchmark_device,  # noqa: E402
                               run_child, timed, write_results)
from hypermorph_spatially_adaptive import HyperVxmDense, VxmDense, sample_hyperparams  # noqa: E402
from hypermorph_spatially_adaptive.models import hypernetwork  # noqa: E402
from hypermorph_spatially_adaptive.core.objective import registration_loss  # noqa: E402

ELASTIC = "objective.registration_loss (global: NCC weighted by 1 - lam - mu + regularizers.elastic_energy)"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "model.json"
CASES = ("2d_b1", "2d_b4", "2d_b4_shared", "3d_b1")


def _loop_hyper_conv(x, weight, bias, stride=1, padding=0):
    """Per-sample loop alternative to :func:`hypernetwork.hyper_conv` (for ``--alternatives``)."""
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    if weight.shape[0] == 1:
        return conv(x, weight[0], bias[0], stride=stride, padding=padding)
    return torch.cat([conv(x[i:i + 1], weight[i], bias[i], stride=stride, padding=padding)
                      for i in range(x.shape[0])])


def _case_shape(case: str, size_2d: Sequence[int], size_3d: Sequence[int]) -> tuple[tuple[int, ...], int, bool]:
    shape = tuple(size_3d) if case.startswith("3d") else tuple(size_2d)
    batch = 4 if "_b4" in case else 1
    return shape, batch, case.endswith("shared")


def _make_step(model, optimizer, moving, fixed, hyper, loop: bool = False):
    """One training step with the global model's loss (``hyper`` ``[B, 2]``); the plain model gets the same loss."""
    is_hyper = isinstance(model, HyperVxmDense)

    def step() -> float:
        original = hypernetwork.hyper_conv
        if loop:
            hypernetwork.hyper_conv = _loop_hyper_conv
        try:
            optimizer.zero_grad(set_to_none=True)
            out = model(moving, fixed, hyper) if is_hyper else model(moving, fixed)
            loss = registration_loss(fixed, out.warped, out.velocity, hyper).total
            loss.backward()
            optimizer.step()
        finally:
            hypernetwork.hyper_conv = original
        return float(loss.detach())

    return step


def _time(step, device: torch.device) -> float:
    """Milliseconds of one step."""
    return timed(step, device)[0] * 1000.0


def _adam(model: torch.nn.Module, impl: str) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if impl == "fused" else {"foreach": True}))


def run_case(case: str, shape: tuple[int, ...], batch: int, shared: bool, device: torch.device, repeats: int,
             warmup: int, alternatives: bool, adam: str = "fused", seed: int = 0) -> dict:
    """Time one case; returns medians (ms/step) per variant, all samples and the parameter counts."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    moving = torch.rand(batch, 1, *shape, generator=g).to(device)
    fixed = torch.rand(batch, 1, *shape, generator=g).to(device)
    hyper = sample_hyperparams(batch, 1, endpoint_prob=0.0, generator=g)
    if shared:
        hyper = hyper[:1].expand(batch, -1).contiguous()
    hyper = hyper.to(device)
    models = {"hyper": HyperVxmDense(shape, 2).to(device), "plain": VxmDense(shape).to(device)}
    steps = {}
    for name, model in models.items():
        steps[name] = _make_step(model, _adam(model, adam), moving, fixed, hyper)
    if alternatives and batch > 1 and not shared:
        model = models["hyper"]
        steps["hyper_loop"] = _make_step(model, _adam(model, adam), moving, fixed, hyper, loop=True)
    samples = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in range(repeats):
        for name, step in steps.items():  # round-robin: every variant sees the same background load
            samples[name].append(_time(step, device))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    minima = {name: min(values) for name, values in samples.items()}
    result = {
        "case": case, "shape": list(shape), "batch": batch, "shared_parameters": shared,
        "ms_per_step": medians, "min_ms_per_step": minima, "samples_ms": samples,
        "ratio_hyper_over_plain": medians["hyper"] / medians["plain"],
        "ratio_of_minima": minima["hyper"] / minima["plain"],
        # hyper and plain of the same round ran back to back: their ratio cancels slow changes in background load
        "median_paired_ratio": statistics.median(h / p for h, p in zip(samples["hyper"], samples["plain"])),
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
    }
    if "hyper_loop" in medians:
        result["ratio_loop_over_grouped"] = medians["hyper_loop"] / medians["hyper"]
    return result


def combine_processes(runs: list[dict]) -> dict:
    """One case's result from several processes' :func:`run_case` results: medians over the processes of their
    medians, minima and ratios; ``paired_ratio_per_process`` keeps each process's paired ratio."""
    failed = [r["error"] for r in runs if "error" in r]
    runs = [r for r in runs if "error" not in r]
    if not runs:
        raise RuntimeError(f"every process failed: {failed}")
    first = runs[0]
    names = first["ms_per_step"].keys()
    result = {key: first[key] for key in ("case", "shape", "batch", "shared_parameters", "parameters")}
    result["ms_per_step"] = {n: statistics.median(r["ms_per_step"][n] for r in runs) for n in names}
    result["min_ms_per_step"] = {n: min(r["min_ms_per_step"][n] for r in runs) for n in names}
    for key in ("ratio_hyper_over_plain", "ratio_of_minima", "median_paired_ratio", "ratio_loop_over_grouped"):
        if key in first:
            result[key] = statistics.median(r[key] for r in runs)
    result["paired_ratio_per_process"] = [r["median_paired_ratio"] for r in runs]
    result["processes"] = len(runs)
    if failed:
        result["failed_processes"] = failed
    return result


def _parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, DEFAULT_OUT)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant (default 3, --quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--size-2d", type=int, nargs=2, default=[192, 192], metavar=("H", "W"))
    parser.add_argument("--size-3d", type=int, nargs=3, default=[96, 64, 96], metavar=("D", "H", "W"))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=["2d_b1", "2d_b4", "2d_b4_shared", "3d_b1"])
    parser.add_argument("--alternatives", action="store_true",
                        help="also time the per-sample loop instead of the grouped conv for batch > 1")
    parser.add_argument("--adam", choices=("fused", "foreach"), default="fused",
                        help="Adam implementation (fused: one kernel per step, no temporaries)")
    parser.add_argument("--processes", type=int, default=None,
                        help="fresh processes per case, medians over them (default 3, --quick 1; 1: in this process)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    args.processes = args.processes if args.processes is not None else (1 if args.quick else 3)
    if args.repeats < 1 or args.warmup < 0 or args.processes < 1:
        parser.error("--repeats and --processes must be >= 1 and --warmup >= 0")
    return parser, args


def _row(r: dict) -> list:
    ms, lo = r["ms_per_step"], r["min_ms_per_step"]
    return [r["case"], "x".join(map(str, r["shape"])), r["batch"], f"{ms['hyper']:.1f} ({lo['hyper']:.0f})",
            f"{ms['plain']:.1f} ({lo['plain']:.0f})",
            f"{r['ratio_hyper_over_plain']:.2f} ({r['ratio_of_minima']:.2f})", f"{r['median_paired_ratio']:.2f}",
            " ".join(f"{v:.2f}" for v in r.get("paired_ratio_per_process", [])) or "-",
            f"{ms['hyper_loop']:.1f}" if "hyper_loop" in ms else "-"]


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = _parse(argv)
    device = resolve_benchmark_device(parser, args)
    if args.child:
        case = json.loads(args.child)
        shape, batch, shared = _case_shape(case, args.size_2d, args.size_3d)
        print(json.dumps(run_case(case, shape, batch, shared, device, args.repeats, args.warmup, args.alternatives,
                                  args.adam)))
        return 0
    machine = machine_info(device)
    results = []
    print(f"elastic loss: {ELASTIC}; device {device}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"adam {args.adam}; median (min) of {args.repeats} steps, {args.processes} process(es) per case")
    for case in args.cases:
        shape, batch, shared = _case_shape(case, args.size_2d, args.size_3d)
        if args.processes == 1:
            r = run_case(case, shape, batch, shared, device, args.repeats, args.warmup, args.alternatives, args.adam)
        else:
            extra = ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--adam", args.adam,
                     "--size-2d", *map(str, args.size_2d), "--size-3d", *map(str, args.size_3d),
                     *(["--alternatives"] if args.alternatives else [])]
            r = combine_processes([run_child(__file__, case, shape, {}, args, device, extra)
                                   for _ in range(args.processes)])
        results.append(r)
        print(f"{case}: hyper {r['ms_per_step']['hyper']:.1f} ms, plain {r['ms_per_step']['plain']:.1f} ms",
              flush=True)
    print(format_table(["case", "shape", "B", "hyper ms (min)", "plain ms (min)", "ratio (of minima)", "paired",
                        "paired per process", "loop ms"], [_row(r) for r in results]))
    report = {
        "benchmark": "training step (forward, NCC + elastic, backward, Adam) HyperVxmDense vs plain U-Net",
        "machine": machine, "quick": args.quick,
        "elastic_loss": ELASTIC, "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "platform": machine["platform"], "processor": machine["cpu_model"],
        "repeats": args.repeats, "warmup": args.warmup, "processes": args.processes, "adam": args.adam,
        "results": results,
    }
    write_results(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
