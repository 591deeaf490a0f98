"""The benchmark report machinery on synthetic results: linear fit, renderers, run_all --report-only (no timing)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    # The benchmarks are scripts, not a package: load them by path (each puts the repository root on sys.path).
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scaling = _load("bench_scaling")
run_all = _load("run_all")

MIB = 2 ** 20


def _scaling_results(time_slope=2e-6, time_offset=0.5, memory_slope=400.0, memory_offset=900 * MIB) -> dict:
    """A scaling.json as bench_scaling writes it, with times and memory exactly linear in the voxel count."""
    records = []
    for edge in (64, 96, 128):
        voxels = edge ** 3
        for model, factor in (("hyper", 1.0), ("plain", 0.5)):
            for phase, phase_factor in (("train", 3.0), ("infer", 1.0)):
                scale = factor * phase_factor
                records.append({"shape": [edge] * 3, "voxels": voxels, "model": model, "phase": phase, "classes": 5,
                                "median_s": scale * (time_slope * voxels + time_offset),
                                "min_s": scale * time_slope * voxels, "median_cpu_s": 2 * scale,
                                "rss_peak_bytes": scale * (memory_slope * voxels + memory_offset),
                                "rss_peak_over_start_bytes": scale * memory_slope * voxels})
    target = 224 * 192 * 224
    return {"memory_key": "rss_peak_bytes", "num_classes": 5, "repeats": 1, "device": "cpu", "threads": 2,
            "machine": {"cpu_model": "Test CPU", "cpus_available": 2, "torch_threads": 2, "torch": "9.9",
                        "device": "cpu", "device_name": "Test CPU", "load_average_1min": 0.5,
                        "date": "2024-01-01T00:00:00+00:00"},
            "results": records,
            "extrapolation": {"shape": [224, 192, 224], "voxels": target,
                              "fits": scaling.fits(records, "rss_peak_bytes", target)},
            "train_step_times": [{"shape": [128, 128], "model_type": "global", "median_s": 0.25, "min_s": 0.2},
                                  {"shape": [64, 64, 64], "model_type": "spatial", "median_s": 1.75,
                                   "min_s": 1.5}]}


def test_linear_fit_recovers_an_exact_line_and_extrapolates_it():
    x = [64 ** 3, 96 ** 3, 128 ** 3]
    y = [3e-6 * v + 0.4 for v in x]
    line = scaling.fit_linear(x, y)
    assert line.slope == pytest.approx(3e-6, rel=1e-9)
    assert line.intercept == pytest.approx(0.4, rel=1e-9)
    assert max(map(abs, line.residuals)) < 1e-9
    assert line.predict(224 * 192 * 224) == pytest.approx(3e-6 * 224 * 192 * 224 + 0.4, rel=1e-9)


def test_linear_fit_residuals_are_measured_minus_fitted():
    line = scaling.fit_linear([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])  # least squares: slope 0.5, intercept 0.5
    assert (line.slope, line.intercept) == pytest.approx((0.5, 0.5))
    assert line.residuals == pytest.approx((-0.5, 1.0, -0.5))


def test_linear_fit_rejects_a_single_size():
    with pytest.raises(ValueError, match="two distinct x"):
        scaling.fit_linear([10, 10], [1.0, 2.0])


def test_scaling_fits_extrapolate_time_and_memory_per_model_and_phase():
    data = _scaling_results()
    fits = data["extrapolation"]["fits"]
    assert set(fits) == {"hyper_train", "hyper_infer", "plain_train", "plain_infer"}
    target = data["extrapolation"]["voxels"]
    assert fits["hyper_train"]["time_s"]["extrapolated"] == pytest.approx(3.0 * (2e-6 * target + 0.5))
    assert fits["plain_infer"]["memory_bytes"]["extrapolated"] == pytest.approx(0.5 * (400.0 * target + 900 * MIB))
    assert fits["plain_train"]["time_s"]["slope_per_voxel"] == pytest.approx(1.5 * 2e-6)


def test_scaling_fits_skip_failed_cases():
    data = _scaling_results()
    records = [dict(r, error="killed") if r["model"] == "plain" and r["voxels"] != 64 ** 3 else r
               for r in data["results"]]
    fits = scaling.fits(records, "rss_peak_bytes", 10 ** 6)
    assert set(fits) == {"hyper_train", "hyper_infer"}  # one plain size left: no line


def test_parse_size_reads_cubes_and_shapes():
    assert scaling.parse_size("96") == (96, 96, 96)
    assert scaling.parse_size("96x64x96") == (96, 64, 96)
    assert scaling.parse_size("128x128") == (128, 128)
    with pytest.raises(Exception, match="size"):
        scaling.parse_size("9x9x9x9")


def _table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith(f"| {first_cell} ")]


def test_scaling_renderer_tables_times_ratios_memory_and_extrapolation():
    text = run_all.render_scaling(_scaling_results())
    row = _table_rows(text, "96x96x96")[0]  # the time table comes first
    hyper_train = 3.0 * (2e-6 * 96 ** 3 + 0.5)
    assert float(row[1]) == pytest.approx(hyper_train, abs=1e-3)
    assert float(row[3]) == pytest.approx(2.0)  # hyper / plain
    assert [float(c) for c in _table_rows(text, "96x96x96")[1][1:]] == [6.0, 3.0, 2.0, 1.0]  # CPU seconds
    memory_row = _table_rows(text, "96x96x96")[2]
    assert float(memory_row[1]) == pytest.approx(3.0 * (400.0 * 96 ** 3 + 900 * MIB) / MIB, abs=1)
    fit_row = _table_rows(text, "hyper train")[0]
    target = 224 * 192 * 224
    assert float(fit_row[4]) == pytest.approx(3.0 * (2e-6 * target + 0.5), abs=0.1)
    assert float(fit_row[8]) == pytest.approx(3.0 * (400.0 * target + 900 * MIB) / 2 ** 30, abs=0.1)
    assert _table_rows(text, "64x64x64")[-1][2:] == ["1.750", "1.500", "-"]  # the 3D training-step row, no CPU time


def test_regularizer_and_model_renderers_table_each_variant():
    regularizers = {"shape": [32, 32, 32], "batch": 1, "repeats": 2, "device": "cpu",
                    "results": {name: {"median_s": t, "min_s": t, "peak_bytes": 10 * MIB, "peak_over_inputs_bytes": MIB}
                                for name, t in (("fast_scalar", 0.125), ("reference_scalar", 1.5))},
                    "ratios": {"speedup_scalar": 12.0}, "targets_met": {"fast_at_least_2x_faster": True}}
    text = run_all.render_regularizers(regularizers)
    assert _table_rows(text, "fast_scalar")[0][1] == "0.1250"
    assert _table_rows(text, "reference_scalar")[0][3] == "10.0"
    assert _table_rows(text, "speedup fast over reference (scalar)")[0][1] == "12.000"
    assert _table_rows(text, "fast_at_least_2x_faster")[0][1] == "met"
    model = {"adam": "fused", "repeats": 3, "device": "cpu",
             "results": [{"case": "3d_b1", "shape": [96, 64, 96], "batch": 1,
                          "ms_per_step": {"hyper": 300.0, "plain": 250.0}, "ratio_hyper_over_plain": 1.2,
                          "median_paired_ratio": 1.19, "paired_ratio_per_process": [1.19, 1.25],
                          "parameters": {"hyper": 42_000_000, "plain": 327_000}}]}
    row = _table_rows(run_all.render_model(model), "3d_b1")[0]
    assert row[1:6] == ["96x64x96", "1", "300.0", "250.0", "1.20"]
    assert row[7] == "1.19 1.25" and row[8] == "-"  # no loop variant measured


def test_model_benchmark_combines_processes_by_their_medians():
    bench_model = _load("bench_model")

    def run(ms_hyper, paired):
        return {"case": "2d_b1", "shape": [8, 8], "batch": 1, "shared_parameters": False, "parameters": {},
                "ms_per_step": {"hyper": ms_hyper, "plain": 10.0}, "min_ms_per_step": {"hyper": ms_hyper - 1,
                                                                                       "plain": 9.0},
                "ratio_hyper_over_plain": ms_hyper / 10.0, "ratio_of_minima": (ms_hyper - 1) / 9.0,
                "median_paired_ratio": paired}

    combined = bench_model.combine_processes([run(12.0, 1.2), run(15.0, 1.4), run(13.0, 1.25),
                                              {"error": "killed"}])
    assert combined["ms_per_step"] == {"hyper": 13.0, "plain": 10.0}
    assert combined["min_ms_per_step"]["hyper"] == 11.0
    assert combined["median_paired_ratio"] == 1.25 and combined["paired_ratio_per_process"] == [1.2, 1.4, 1.25]
    assert combined["processes"] == 3 and combined["failed_processes"] == ["killed"]


def test_inference_renderer_tables_each_size_and_skips_missing_memory():
    data = {"memory_key": "rss_peak_bytes", "num_classes": 5, "repeats": 1,
            "results": [{"shape": [128, 128], "register_s": 0.05, "register_min_s": 0.04, "score_s": 0.01,
                         "score_hd95_s": 0.2, "write_s": 0.03, "rss_peak_bytes": 700 * MIB},
                        {"shape": [96, 96, 96], "error": "killed"}]}
    text = run_all.render_inference(data)
    assert _table_rows(text, "128x128")[0] == ["128x128", "0.050", "0.040", "0.010", "0.200", "0.030", "700"]
    assert _table_rows(text, "96x96x96")[0][1:] == ["-"] * 6


def test_identification_renderer_tables_each_grid_batch_and_the_target():
    data = {"device": "cpu", "threads": 2, "repeats": 3, "paired_speedup_batch16": 2.5,
            "results": [{"case": "2d batch 1", "shape": [128, 128], "grid_points": 66, "grid_batch": 1,
                         "median_s": 4.0, "min_s": 3.9, "ms_per_point": 60.6, "speedup_over_unbatched": 1.0},
                        {"case": "2d batch 16", "shape": [128, 128], "grid_points": 66, "grid_batch": 16,
                         "median_s": 1.6, "min_s": 1.5, "ms_per_point": 24.2, "speedup_over_unbatched": 2.5}],
            "targets_met": {"batched >= 2.0x unbatched (2D)": True}}
    text = run_all.render_identification(data)
    assert _table_rows(text, "2d batch 16")[0] == ["2d batch 16", "128x128", "66", "16", "1.600", "1.500", "24.2",
                                                   "2.50"]
    assert "2.50x" in text
    assert _table_rows(text, "batched >= 2.0x unbatched (2D)")[0][1] == "met"


def test_report_only_writes_the_markdown_from_a_results_folder(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "scaling.json").write_text(json.dumps(_scaling_results()))
    (results / "scaling_cuda.json").write_text(json.dumps({**_scaling_results(), "device": "cuda"}))
    (results / "mystery.json").write_text(json.dumps({"benchmark": "something new"}))
    out = tmp_path / "report" / "BENCHMARKS.md"
    assert run_all.main(["--report-only", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Scaling with image size" in text and "| hyper train |" in text
    machine = _table_rows(text, "scaling.json")[0]
    assert machine[1:6] == ["cpu", "Test CPU", "2", "2", "9.9"]
    inference = text.split("## Inference per pair")[1].split("##")[0]
    assert "Not yet measured." in inference
    gpu = text.split("### Scaling with image size, on CUDA")[1].split("##")[0]
    assert "`benchmarks/results/scaling_cuda.json`" in gpu and "| hyper train |" in text.split("on CUDA")[1]
    other = text.split("## Other results files")[1]
    assert "`benchmarks/results/mystery.json`" in other and "scaling_cuda" not in other
    assert not (ROOT / "benchmarks" / "results" / "mystery.json").exists()


def test_results_of_another_device_go_to_their_own_file():
    assert run_all.results_file("model", "cpu").name == "model.json"
    assert run_all.results_file("model", "cuda:1").name == "model_cuda.json"


def test_run_all_rejects_an_unknown_benchmark_name(capsys):
    with pytest.raises(SystemExit) as error:
        run_all.main(["--only", "nonexistent"])
    assert error.value.code == 2
    assert "nonexistent" in capsys.readouterr().err


def test_every_benchmark_script_is_found_by_its_short_name():
    names = run_all.benchmark_scripts()
    assert {"regularizers", "model", "scaling"} <= set(names)
    assert all(path.name == f"bench_{name}.py" and path.is_file() for name, path in names.items())


def test_training_step_renderer_tables_each_run_with_its_synchronisations():
    run = {"model_type": "global", "steps": 10, "median_s": 0.02, "steps_per_s": 50.0, "min_s": 0.015,
           "device_syncs_per_step": 4}
    data = {"label": "after", "shape": [64, 64], "batch": 4, "threads": 2, "device": "cuda", "results": [run],
            "note": "a note", "references": [{"label": "before", "results": [{**run, "device_syncs_per_step": 21}],
                                              "note": "an earlier commit"}]}
    text = run_all.render_training_step(data)
    assert _table_rows(text, "after")[0][1:] == ["global", "20.0", "50.00", "15.0", "4"]
    assert _table_rows(text, "before")[0][-1] == "21"
    assert "a note." in text and "an earlier commit." in text


def test_locality_report_lists_every_variant_with_its_classes():
    data = {"size": 64, "pairs": 8, "global_steps": 2000, "steps": 1000,
            "results": [{"variant": "tissue, warm start, no training (recommended)", "class_names": ["lung", "bone"],
                         "locality": [0.93, 0.64], "leakage": [0.27, 0.12], "control_epe_mm": 0.412, "steps": 0}]}
    text = run_all.render_locality(data)
    assert "| tissue, warm start, no training (recommended) | 0.93 | 0.64 | 0.27 | 0.12 | 0.412 | 0 |" in text
    assert "locality bone" in text and "leakage lung" in text
