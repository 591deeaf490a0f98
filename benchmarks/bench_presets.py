"""Each preset of configs/ run with --dry-run on synthetic data in its dataset's layout: time per training step and
peak memory at the preset's image size (or scaled down to --max-voxels), each preset in its own process.

    python benchmarks/bench_presets.py --device cuda          # every preset at its real size
    python benchmarks/bench_presets.py --threads 1            # on the CPU: presets over 1.5e6 voxels scaled down
    python benchmarks/bench_presets.py --presets nlst_2d_global acdc_2d_global

The dry run is the training script's own (``--config configs/X.yaml --dry-run``): it opens the data, builds the model
(a spatial preset from an untrained global model of the default widths, as ``--init-from``), times three steps
(the first a warm-up) and prints the plan, which this script reads. Writes ``benchmarks/results/presets.json`` and
prints a markdown table for the README.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_common_args, machine_info, markdown_table, resolve_benchmark_device, \
    write_results  # noqa: E402
from benchmarks.preset_trees import file_geometry, load_preset, preset_files, write_tree  # noqa: E402

__all__ = ["main"]

_STEP = re.compile(r"training step\s+([\d.e+-]+) s per step")
_MEMORY = re.compile(r"training step memory\s+([\d.]+) (MiB|GiB) (.+?) \(\+([\d.]+) (MiB|GiB)")
_UNITS = {"MiB": 2 ** 20, "GiB": 2 ** 30}


def _size(preset: dict, max_voxels: float | None) -> tuple[list[int], float]:
    """The image size the dry run uses (the preset's, or scaled down to ``max_voxels``) and the scale."""
    shape, _ = file_geometry(preset)
    size = [n for n, keep in zip(shape, (True, True, int(preset.get("ndim") or 3) == 3)) if keep]
    if preset["dataset"] != "acdc" and int(preset.get("ndim") or 3) == 2:
        size = [shape[0], shape[2]]
    scale = 1.0
    if max_voxels and math.prod(size) > max_voxels:
        scale = (max_voxels / math.prod(size)) ** (1 / len(size))
    return size, scale


def _global_checkpoint(ndim: int, folder: Path) -> Path:
    from hypermorph_spatially_adaptive.models.networks import HyperVxmDense

    path = folder / f"global_{ndim}d.pt"
    if not path.is_file():
        HyperVxmDense((32,) * ndim, 2).save(path)
    return path


def measure_preset(path: Path, args: argparse.Namespace, work: Path) -> dict:
    """Write the synthetic tree, run the preset's dry run in a child process and read its plan."""
    preset = load_preset(path)
    size, scale = _size(preset, args.max_voxels)
    data = write_tree(preset, work / path.stem, scale=scale, train=max(2, int(preset.get("batch_size", 1))))
    kind = "spatial" if path.stem.endswith("spatial") else "global"
    command = [sys.executable, str(ROOT / f"train_hypermorph_{kind}.py"), "--config", str(path), "--data-root",
               str(data), "--out", str(work / "never" / path.stem), "--dry-run", "--device", str(args.device),
               "--workers", "0"]
    measured_size = [max(8, int(round(n * scale))) for n in size]
    if preset["dataset"] == "acdc" and int(preset["ndim"]) == 3:
        command += ["--dataset-option", f"shape=[{measured_size[0]}, {measured_size[1]}]"]
        measured_size = [*measured_size[:2], 10]
    elif scale < 1:
        command += ["--image-size", *map(str, measured_size)]
    if kind == "spatial":
        command += ["--init-from", str(_global_checkpoint(int(preset["ndim"]), work))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else dict(os.environ)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    record = {"preset": path.stem, "size": measured_size, "scale": scale, "steps": int(preset.get("steps", 0)),
              "batch_size": int(preset.get("batch_size", 1))}
    step, memory = _STEP.search(proc.stdout), _MEMORY.search(proc.stdout)
    if proc.returncode != 0 or not step or not memory:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        print(f"  {path.stem} failed: {tail}", file=sys.stderr)
        return {**record, "error": tail}
    record.update(seconds_per_step=float(step.group(1)),
                  peak_bytes=float(memory.group(1)) * _UNITS[memory.group(2)], memory_kind=memory.group(3),
                  added_bytes=float(memory.group(4)) * _UNITS[memory.group(5)], plan=proc.stdout)
    print(f"  {path.stem}: {record['seconds_per_step']:.3g} s/step at {'x'.join(map(str, measured_size))}, "
          f"peak {record['peak_bytes'] / 2 ** 30:.2f} GiB", flush=True)
    return record


def table(records: list[dict]) -> str:
    """The README's presets table."""
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["preset"], "x".join(map(str, r["size"])), "failed", "", "", ""])
            continue
        total = r["seconds_per_step"] * r["steps"]
        rows.append([f"`configs/{r['preset']}.yaml`", "x".join(map(str, r["size"]))
                     + ("" if r["scale"] == 1 else f" (scaled {r['scale']:.2f})"), str(r["batch_size"]),
                     f"{r['seconds_per_step']:.3g}", f"{r['steps']} ({total / 3600:.1f} h)" if r["steps"] else
                     "0 (the recipe)", f"{r['peak_bytes'] / 2 ** 30:.2f}"])
    return markdown_table(["preset", "measured size", "batch", "s per step", "steps (time at this speed)", "peak GiB"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, ROOT / "benchmarks" / "results" / "presets.json", threads=0)
    parser.add_argument("--presets", nargs="+", default=None, help="preset names (default: all)")
    parser.add_argument("--max-voxels", type=float, default=None,
                        help="scale presets with more voxels than this down, every axis alike (default: 1.5e6 on the "
                             "CPU, where a 224x192x224 step needs ~17 GiB and ~40 s; none on CUDA; 0: none)")
    args = parser.parse_args(argv)
    device = resolve_benchmark_device(parser, args)
    if args.max_voxels is None:
        args.max_voxels = 1.5e6 if device.type == "cpu" else 0
    paths = [p for p in preset_files() if args.presets is None or p.stem in args.presets]
    if args.quick:
        args.max_voxels = min(args.max_voxels or 1e12, 64 ** 2)
    with tempfile.TemporaryDirectory(prefix="presets-") as folder:
        records = [measure_preset(path, args, Path(folder)) for path in paths]
    write_results({"machine": machine_info(device), "max_voxels": args.max_voxels, "presets": records}, args.out)
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
