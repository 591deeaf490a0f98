"""The presets in configs/: each one loads with --dry-run on a tiny synthetic tree in its dataset's layout, every value
says where it comes from, and the README lists them all."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from hypermorph_spatially_adaptive.models.networks import HyperVxmDense
from hypermorph_spatially_adaptive.stages import training

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:ACDC")  # the tiny ACDC trees hold a few of the split's patients
TINY_WIDTHS = ["--enc-features", "4", "8", "--dec-features", "8", "8", "4", "--hyper-layers", "2", "--hyper-units",
               "16"]


def _load(name: str):
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trees = _load("preset_trees")
PRESETS = trees.preset_files()


def test_there_is_a_preset_per_dataset_dimension_and_model():
    names = {path.stem for path in PRESETS}
    assert names == {f"{d}_{n}d_{k}" for d in ("nlst", "lungct", "acdc") for n in (2, 3) for k in ("global", "spatial")}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_value_names_its_source(path):
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.search(r"#\s*\[(paper|release|project)\]", line), f"{path.name}: no source on {line!r}"


@pytest.fixture(scope="module")
def tiny_global_models(tmp_path_factory):
    """Untrained global models (2D, 3D) of tiny widths, as bare checkpoints, for the spatial presets' --init-from."""
    folder = tmp_path_factory.mktemp("global")
    paths = {}
    for ndim in (2, 3):
        model = HyperVxmDense((16,) * ndim, 2, enc_features=(4, 8), dec_features=(8, 8, 4), hyper_layers=2,
                              hyper_units=16)
        paths[ndim] = folder / f"global{ndim}d.pt"
        model.save(paths[ndim])
    return paths


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_with_dry_run_on_its_layout(path, tiny_global_models, tmp_path, capsys):
    preset = trees.load_preset(path)
    ndim = int(preset["ndim"])
    data = trees.write_tree(preset, tmp_path / "data", scale=16 / max(preset.get("image_size") or [128]))
    kind = "spatial" if path.stem.endswith("spatial") else "global"
    out = tmp_path / "run"
    argv = ["--config", str(path), "--data-root", str(data), "--out", str(out), "--dry-run", "--device", "cpu",
            "--workers", "0", "--batch-size", "1"]
    if preset["dataset"] == "acdc" and ndim == 3:
        argv += ["--dataset-option", "shape=[16, 16]"]  # the preset crops in-plane through this option
    else:
        argv += ["--image-size", *["16"] * ndim]
    argv += ["--init-from", str(tiny_global_models[ndim])] if kind == "spatial" else TINY_WIDTHS
    assert training.main(kind, argv) == 0
    text = capsys.readouterr().out
    assert "s per step" in text and "parameters" in text and "classes" in text
    if kind == "spatial":
        assert "conditioning tissue" in text and f"warm start from {tiny_global_models[ndim]}" in text
        assert "0 (batch 1" in text  # the recipe: no further training
    assert not out.exists()


def test_the_readme_lists_every_preset():
    readme = (ROOT / "README.md").read_text()
    missing = [path.name for path in PRESETS if f"configs/{path.name}" not in readme]
    assert not missing, f"README lacks the presets {missing}"


def test_the_benchmark_table_and_the_report_section():
    bench = _load("bench_presets")
    records = [{"preset": "nlst_3d_global", "size": [112, 96, 112], "scale": 0.5, "steps": 30000, "batch_size": 1,
                "seconds_per_step": 6.0, "peak_bytes": 3 * 2 ** 30, "added_bytes": 2 ** 30},
               {"preset": "nlst_3d_spatial", "size": [224, 192, 224], "scale": 1.0, "steps": 0, "batch_size": 1,
                "error": "out of memory"}]
    lines = bench.table(records).splitlines()
    assert lines[2].split(" | ")[1:] == ["112x96x112 (scaled 0.50)", "1", "6", "30000 (50.0 h)", "3.00 |"]
    assert "failed" in lines[3]
    run_all = _load("run_all")
    assert run_all.render_presets({"presets": records}) == bench.table(records)
