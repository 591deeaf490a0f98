"""inference.py --instance-steps and --methods identity/elastix on the tiny 2D phantom models of conftest."""
import csv
import json
import sys

import pytest

from hypermorph_spatially_adaptive.stages.inference import main
from hypermorph_spatially_adaptive.stages.inference.instance import DEFAULT_NCC_WINDOW
from hypermorph_spatially_adaptive.stages.parameter_table import ParameterRow, write_parameters

CLASSES = ("background", "soft_tissue", "lung", "bone", "liver")


def _parameters(path, population_mu=0.2):
    scopes = {"global": ([0.3] * 5, [0.2] * 5), "population": ([0.1] * 5, [population_mu] * 5)}
    return write_parameters(path, [ParameterRow(scope, c, CLASSES[c], lam[c], mu[c], "dice", 0.5)
                                   for scope, (lam, mu) in scopes.items() for c in range(5)])


def _argv(trained_global, trained_spatial, parameters, out, phantom_root, *extra):
    return ["--spatial-model", str(trained_spatial), "--global-model", str(trained_global),
            "--parameters", str(parameters), "--out", str(out), "--device", "cpu", "--data-root", str(phantom_root),
            "--split", "train", "--max-pairs", "1", "--figures", "0", "--no-save-outputs", *extra]


def _rows(out):
    with open(out / "metrics.csv", newline="") as handle:
        return {r["method"]: r for r in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def io_run(phantom_root, trained_global, trained_spatial, tmp_path_factory):
    folder = tmp_path_factory.mktemp("io")
    parameters = _parameters(folder / "parameters.csv")
    out = folder / "run"
    argv = _argv(trained_global, trained_spatial, parameters, out, phantom_root, "--methods", "global",
                 "tissue_population", "identity", "--instance-steps", "25", "--instance-levels", "2", "1",
                 "--instance-lr", "0.1")
    assert main(argv) == 0
    return out, argv, parameters


def test_every_method_gets_an_optimised_counterpart_recorded_in_the_run(io_run):
    out, _, _ = io_run
    rows = _rows(out)
    assert list(rows) == ["global", "global+io", "tissue_population", "tissue_population+io", "identity",
                          "identity+io"]
    assert rows["identity"]["epe_mm"] and float(rows["identity+io"]["epe_mm"]) < float(rows["identity"]["epe_mm"])
    assert float(rows["tissue_population+io"]["runtime_s"]) > float(rows["tissue_population"]["runtime_s"])
    assert rows["identity+io"]["parameters_source"] == "population"
    record = json.loads((out / "run.json").read_text())
    assert record["options"]["instance_steps"] == 25 and record["options"]["instance_levels"] == [2, 1]
    assert record["options"]["instance_ncc_window"] == DEFAULT_NCC_WINDOW
    config = json.loads((out / "config.json").read_text())
    assert config["instance_optimisation"] == {"steps": 25, "lr": 0.1, "levels": [2, 1],
                                               "ncc_window": DEFAULT_NCC_WINDOW}
    assert "summary" not in config and "identity+io" in (out / "summary.md").read_text()


def test_the_optimisation_starts_from_each_methods_own_field(phantom_root, trained_global, trained_spatial, io_run,
                                                             tmp_path):
    _, _, parameters = io_run
    out = tmp_path / "run"
    argv = _argv(trained_global, trained_spatial, parameters, out, phantom_root, "--methods", "global", "identity",
                 "--instance-steps", "2", "--instance-levels", "1", "--instance-lr", "1e-7")
    assert main(argv) == 0
    rows = _rows(out)
    for method in ("global", "identity"):  # a negligible step leaves the start as it was
        assert float(rows[f"{method}+io"]["epe_mm"]) == pytest.approx(float(rows[method]["epe_mm"]), abs=1e-4)


def test_instance_parameters_replace_the_methods_own_and_resume_keeps_the_rows(io_run, tmp_path, phantom_root,
                                                                              trained_global, trained_spatial,
                                                                              capsys):
    _, _, parameters = io_run
    chosen = _parameters(tmp_path / "io_parameters.csv", population_mu=0.6)
    out = tmp_path / "run"
    argv = _argv(trained_global, trained_spatial, parameters, out, phantom_root, "--methods", "identity",
                 "--instance-steps", "10", "--instance-levels", "1", "--instance-parameters", str(chosen))
    assert main(argv) == 0
    first = _rows(out)
    record = json.loads((out / "run.json").read_text())
    assert "--instance-parameters" in record["inputs"]
    assert main([*argv, "--resume"]) == 0
    assert _rows(out) == first
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--resume", "--instance-steps", "11"])
    assert exit_info.value.code == 2 and "--instance-steps" in capsys.readouterr().err


def test_the_ncc_window_is_the_optimisations_own(io_run, tmp_path, phantom_root, trained_global, trained_spatial):
    _, _, parameters = io_run
    out = tmp_path / "narrow"
    assert main(_argv(trained_global, trained_spatial, parameters, out, phantom_root, "--methods", "identity",
                      "--instance-steps", "25", "--instance-levels", "2", "1", "--instance-lr", "0.1",
                      "--instance-ncc-window", "3")) == 0
    narrow, default = _rows(out)["identity+io"], _rows(io_run[0])["identity+io"]
    assert float(narrow["epe_mm"]) != pytest.approx(float(default["epe_mm"]), rel=1e-4)
    assert json.loads((out / "run.json").read_text())["options"]["instance_ncc_window"] == 3


@pytest.mark.parametrize("extra, flag", [
    (["--instance-steps", "5", "--instance-levels", "2"], "--instance-levels"),
    (["--instance-steps", "5", "--instance-lr", "0"], "--instance-lr"),
    (["--instance-steps", "5", "--instance-ncc-window", "4"], "--instance-ncc-window"),
    (["--instance-parameters", "x.csv"], "--instance-parameters"),
    (["--instance-steps", "5", "--instance-parameters", "missing.csv"], "--instance-parameters"),
])
def test_bad_instance_options_exit_2_naming_the_flag_and_write_nothing(extra, flag, io_run, tmp_path, phantom_root,
                                                                       trained_global, trained_spatial, capsys):
    _, _, parameters = io_run
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(trained_global, trained_spatial, parameters, out, phantom_root, "--methods", "identity", *extra))
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err
    assert not out.exists()


def test_elastix_without_the_extra_names_what_to_install(io_run, tmp_path, phantom_root, trained_global,
                                                         trained_spatial, monkeypatch, capsys):
    _, _, parameters = io_run
    monkeypatch.setitem(sys.modules, "itk", None)  # import itk fails as where the extra is not installed
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(trained_global, trained_spatial, parameters, out, phantom_root, "--methods", "elastix"))
    assert exit_info.value.code == 2 and "pip install .[baselines]" in capsys.readouterr().err
    assert not out.exists()
