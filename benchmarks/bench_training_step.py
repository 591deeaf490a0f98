#!/usr/bin/env python
"""Training steps per second at the demo's 2D settings, global and spatial model.

Usage::

    python benchmarks/bench_training_step.py [--steps 300] [--warmup 10] [--threads 2] [--device cpu]

One step is what the training loop does per batch (``stages.training.step``): the batch checked on the CPU, moved
to the device, parameter vectors drawn by the training sampler, forward through ``model.register``, the loss with
``validate=False`` (its three values read once), backward and a fused Adam step. Settings of ``demo.py``'s quick
preset: 64x64, batch 4, widths enc 16 32 32 / dec 32 32 32 16, hypernetwork 4 x 64, 5 classes for the spatial model
(``--class-sampling mixed``); a synthetic pair with block labels (the content does not change the cost). Reports
the median over ``--steps`` steps after ``--warmup`` untimed ones, and steps per second = 1 / median; on CUDA also
the host-device synchronisations of one step (``torch.cuda.set_sync_debug_mode``). Prints a line
per model and writes ``benchmarks/results/training_step.json``; ``--reference FILE`` copies an earlier results
file (e.g. the same measurement on an older commit, run back to back on the same machine) into it for the report.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (add_common_args, machine_info, resolve_benchmark_device, timed,  # noqa: E402
                               write_results)
from hypermorph_spatially_adaptive import HyperVxmDense  # noqa: E402
from hypermorph_spatially_adaptive.core.objective import sample_training_hyperparams  # noqa: E402
from hypermorph_spatially_adaptive.runtime import DistributedContext  # noqa: E402
from hypermorph_spatially_adaptive.stages.training.step import (LossOptions, check_batch,  # noqa: E402
                                                                training_network, training_step)

__all__ = ["measure", "main"]

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "training_step.json"
SHAPE, BATCH, CLASSES = (64, 64), 4, 5
WIDTHS = dict(enc_features=[16, 32, 32], dec_features=[32, 32, 32, 16], hyper_layers=4, hyper_units=64)
CLASS_NAMES = ["background", "soft_tissue", "lung", "bone", "liver"]


def synthetic_batch(seed: int = 0) -> dict:
    """A collated CPU batch: images ``[B, 1, *S]`` in [0, 1], block labels ``0..4`` (8-voxel blocks), 2 mm."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, CLASSES, (BATCH, 1, SHAPE[0] // 8, SHAPE[1] // 8), generator=generator)
    return {"fixed": torch.rand(BATCH, 1, *SHAPE, generator=generator),
            "moving": torch.rand(BATCH, 1, *SHAPE, generator=generator),
            "fixed_labels": blocks.repeat_interleave(8, 2).repeat_interleave(8, 3),
            "spacing": torch.tensor([[2.0, 2.0]] * BATCH, dtype=torch.float64), "pair_id": ["bench"] * BATCH}


#: Model types measured: the global model, the spatial model with the paper's ``vector`` conditioning and with
#: tissue-wise kernels (``tissue``: C convolutions per layer while the classes' values differ).
MODEL_TYPES = {"global": None, "spatial": "vector", "spatial_tissue": "tissue"}


def measure(model_type: str, steps: int, warmup: int, device: torch.device) -> dict:
    """Median seconds per training step of a model of :data:`MODEL_TYPES` over ``steps`` timed steps; on CUDA
    also the number of host-device synchronisations of one more step."""
    torch.manual_seed(0)
    conditioning = MODEL_TYPES[model_type]
    classes = CLASSES if conditioning else 1
    model = HyperVxmDense(SHAPE, 2 * classes, **WIDTHS, class_names=CLASS_NAMES if conditioning else None,
                          **({"conditioning": conditioning} if conditioning else {})).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    network = training_network(model, DistributedContext(), device)
    options = LossOptions("elastic", classes, "fixed_labels", 9)
    batch, generator = synthetic_batch(), torch.Generator()
    if device.type == "cuda":  # as the training loop's DataLoader (pin_memory): the copies to the GPU are async
        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    spacing = tuple(float(s) for s in batch["spacing"][0])

    def step(index: int) -> float:
        check_batch(batch, options)
        on_device = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        generator.manual_seed(index)
        hyper = sample_training_hyperparams(BATCH, classes, "elastic", generator=generator, device=device,
                                            class_sampling="mixed")
        return training_step(network, optimizer, on_device, hyper, spacing, options, contextlib.nullcontext())[0]

    times = []
    for index in range(warmup + steps):
        seconds, loss = timed(lambda: step(index), device)
        if index >= warmup:
            times.append(seconds)
    syncs = None
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(warmup + steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    median = statistics.median(times)
    return {"model_type": model_type, "steps": steps, "median_s": median, "steps_per_s": 1.0 / median,
            "mean_s": statistics.fmean(times), "min_s": min(times), "final_loss": loss, "device_syncs_per_step": syncs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, DEFAULT_OUT, threads=2)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--label", default="this commit", help="a name for this measurement in the results")
    parser.add_argument("--reference", type=Path, action="append", default=[], metavar="FILE",
                        help="results file of an earlier measurement to keep beside this one (repeatable)")
    parser.add_argument("--note", default="", help="a sentence on what was measured (kept in the results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 20, 3
    device = resolve_benchmark_device(parser, args)
    references = []
    for path in args.reference:
        try:
            references.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            parser.error(f"--reference {path}: {error}")
    machine = machine_info(device)
    results = [measure(kind, args.steps, args.warmup, device) for kind in MODEL_TYPES]
    for r in results:
        syncs = "" if r["device_syncs_per_step"] is None else f", {r['device_syncs_per_step']} device syncs per step"
        print(f"{args.label} {r['model_type']}: {r['steps_per_s']:.2f} steps/s (median {1e3 * r['median_s']:.1f} "
              f"ms{syncs})")
    write_results({"benchmark": "training steps per second, demo 2D settings", "label": args.label,
                   "machine": machine, "device": str(device), "threads": torch.get_num_threads(),
                   "shape": list(SHAPE), "batch": BATCH, "widths": WIDTHS, "note": args.note, "results": results,
                   "references": references}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
