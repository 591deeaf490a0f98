"""inference.py on tiny trained 2D phantom models: outputs, metrics, fallback, resume, explicit files, bad input."""
import csv
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from hypermorph_spatially_adaptive import data as datasets
from hypermorph_spatially_adaptive.core import metrics as eval_metrics
from hypermorph_spatially_adaptive.data import nifti_io
from hypermorph_spatially_adaptive.evaluation import statistics
from hypermorph_spatially_adaptive.stages.inference import report
from hypermorph_spatially_adaptive.models.trained import load_trained_model
from hypermorph_spatially_adaptive.models.networks import spatial_from_global
from hypermorph_spatially_adaptive.evaluation.pair_metrics import end_point_error
from hypermorph_spatially_adaptive.stages.inference import main
from hypermorph_spatially_adaptive.stages.inference.pairs import method_parameters
from hypermorph_spatially_adaptive.stages.parameter_table import ParameterRow, write_parameters

CLASSES = ("background", "soft_tissue", "lung", "bone", "liver")
METHODS = ("global", "tissue_population", "tissue_subject")
SCOPES = {"global": ([0.3] * 5, [0.2] * 5),
          "population": ([0.05, 0.2, 0.02, 0.7, 0.3], [0.05, 0.2, 0.02, 0.25, 0.3]),
          "0001": ([0.5, 0.1, 0.0, 0.9, 0.4], [0.3, 0.1, 0.0, 0.1, 0.4])}


def _parameters(path, scopes=SCOPES, classes=CLASSES):
    rows = [ParameterRow(scope, c, classes[c], lam[c], mu[c], "dice", 0.5)
            for scope, (lam, mu) in scopes.items() for c in range(len(classes))]
    return write_parameters(path, rows)


def _argv(trained_global, trained_spatial, parameters, out, *extra):
    return ["--spatial-model", str(trained_spatial / "checkpoints" / "last.pt"),
            "--global-model", str(trained_global / "checkpoints" / "last.pt"),
            "--parameters", str(parameters), "--out", str(out), "--device", "cpu", *extra]


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def parameters_csv(tmp_path_factory):
    return _parameters(tmp_path_factory.mktemp("identification") / "parameters.csv")


@pytest.fixture(scope="module")
def dataset_run(phantom_root, trained_global, trained_spatial, parameters_csv, tmp_path_factory):
    """Three methods on the first two training pairs: 0001 has its own rows, 0002 falls back to the population."""
    out = tmp_path_factory.mktemp("inference") / "run"
    argv = _argv(trained_global, trained_spatial, parameters_csv, out, "--data-root", str(phantom_root),
                 "--split", "train", "--max-pairs", "2", "--figures", "1")
    assert main(argv) == 0
    return out, argv


def test_help_lists_methods_and_explicit_file_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--methods", "--global-model", "--parameters", "--fixed", "--no-resample", "--literature-params",
                 "--resume", "--figures", "--no-hd95"):
        assert flag in text


def test_outputs_have_the_fixed_grid_shape_and_affine(dataset_run, phantom_root):
    out, _ = dataset_run
    items = datasets.get_dataset("phantom", phantom_root, "train")
    for index, stem in enumerate(("0001_0001", "0002_0002")):
        item = items[index]
        shape, affine = tuple(item["fixed"].shape[1:]), item["affine"].numpy()
        for method in METHODS:
            expected = {"warped": shape, "warped_labels": shape, "jacdet": shape, "disp": (*shape, 2)}
            for kind, expected_shape in expected.items():
                image = nib.load(str(out / method / f"{kind}_{stem}.nii.gz"))
                assert image.shape == expected_shape, (method, kind)
                np.testing.assert_allclose(image.affine, affine)
            labels = np.asanyarray(nib.load(str(out / method / f"warped_labels_{stem}.nii.gz")).dataobj)
            assert labels.max() < len(CLASSES) and set(np.unique(labels)) > {0}


def test_metrics_csv_has_the_documented_columns_and_one_row_per_pair_and_method(dataset_run):
    out, _ = dataset_run
    with open(out / "metrics.csv", newline="") as handle:
        header = next(csv.reader(handle))
    documented = ["pair_id", "method", "dice_mean", *[f"dice_{c}" for c in CLASSES], "hd95_mm", "tre_mm", "sdlogj",
                "folding_percent", "runtime_s"]
    tissue = [f"{metric}_{c}" for metric in ("epe", "tre", "strain", "gt_strain") for c in CLASSES]
    assert header == documented + ["epe_mm", "parameters_source"] + tissue == report.metric_columns(CLASSES)
    rows = _read_csv(out / "metrics.csv")
    assert [(r["pair_id"], r["method"]) for r in rows] == [(p, m) for p in ("0001", "0002") for m in METHODS]
    for row in rows:
        assert 0.0 <= float(row["dice_mean"]) <= 1.0 and float(row["runtime_s"]) > 0
        assert math.isfinite(float(row["hd95_mm"])) and math.isfinite(float(row["epe_mm"]))


def test_tre_recomputed_from_the_written_field_matches_the_csv(dataset_run, phantom_root):
    out, _ = dataset_run
    items = datasets.get_dataset("phantom", phantom_root, "train")
    rows = {(r["pair_id"], r["method"]): r for r in _read_csv(out / "metrics.csv")}
    for index, pair in enumerate(("0001", "0002")):
        item = items[index]
        spacing = tuple(item["spacing"].tolist())
        for method in METHODS:
            field, _ = nifti_io.read_displacement(out / method / f"disp_{pair}_{pair}.nii.gz")
            tre = eval_metrics.tre(item["fixed_keypoints"], item["moving_keypoints"], field, spacing).mean()
            assert float(rows[(pair, method)]["tre_mm"]) == pytest.approx(float(tre), rel=1e-6)
            epe = end_point_error(field, item["gt_displacement"], spacing, item["fixed_labels"][0] > 0)
            assert float(rows[(pair, method)]["epe_mm"]) == pytest.approx(epe, rel=1e-6)
            _check_tissue_columns(rows[(pair, method)], field, item)


def _check_tissue_columns(row, field, item):
    """The per-class columns of a metrics row recomputed from the written field with the core metrics."""
    spacing = tuple(item["spacing"].tolist())
    labels = item["fixed_labels"][0]
    strain = eval_metrics.strain_magnitude(field.double(), spacing)
    true_strain = eval_metrics.strain_magnitude(item["gt_displacement"].double(), spacing)
    for c, name in enumerate(CLASSES):
        inside = labels == c
        assert float(row[f"epe_{name}"]) == pytest.approx(
            end_point_error(field, item["gt_displacement"], spacing, inside), rel=1e-6)
        assert float(row[f"strain_{name}"]) == pytest.approx(float(strain[inside].mean()), rel=1e-6)
        assert float(row[f"gt_strain_{name}"]) == pytest.approx(float(true_strain[inside].mean()), rel=1e-6)
        voxel = item["fixed_keypoints"].round().long()
        points = labels[voxel[:, 0], voxel[:, 1]] == c
        expected = eval_metrics.tre(item["fixed_keypoints"][points], item["moving_keypoints"][points], field,
                                    spacing).mean()
        assert float(row[f"tre_{name}"] or "nan") == pytest.approx(float(expected), rel=1e-6, nan_ok=True)


def test_each_method_runs_its_model_at_its_parameters(dataset_run, phantom_root, trained_spatial, trained_global):
    """The written fields equal the models run at the scope each method must use (0002 has no rows of its own)."""
    out, _ = dataset_run
    spatial, _ = load_trained_model(trained_spatial / "checkpoints" / "last.pt")
    global_model, _ = load_trained_model(trained_global / "checkpoints" / "last.pt")
    items = datasets.get_dataset("phantom", phantom_root, "train")
    hyper = {scope: torch.tensor([lam + mu]) for scope, (lam, mu) in SCOPES.items()}
    expected = {("0001", "global"): (global_model, torch.tensor([[0.3, 0.2]])),
                ("0001", "tissue_population"): (spatial, hyper["population"]),
                ("0001", "tissue_subject"): (spatial, hyper["0001"]),
                ("0002", "tissue_subject"): (spatial, hyper["population"])}
    with torch.no_grad():
        for (pair, method), (model, h) in expected.items():
            item = items[int(pair) - 1]
            field = model(item["moving"][None], item["fixed"][None], h, item["fixed_labels"][None]).displacement[0]
            written, _ = nifti_io.read_displacement(out / method / f"disp_{pair}_{pair}.nii.gz")
            torch.testing.assert_close(written, field, rtol=1e-5, atol=1e-6, msg=f"{pair} {method}")


def test_a_pair_without_subject_rows_falls_back_to_the_population_and_says_so(dataset_run):
    out, _ = dataset_run
    sources = {(r["pair_id"], r["method"]): r["parameters_source"] for r in _read_csv(out / "metrics.csv")}
    assert sources[("0001", "tissue_subject")] == "0001"
    assert sources[("0002", "tissue_subject")] == "population"
    assert sources[("0002", "tissue_population")] == "population" and sources[("0002", "global")] == "global"
    summary = (out / "summary.md").read_text()
    assert "1 of 2 pair(s) have no subject-specific rows" in summary and "0002" in summary


def test_summary_and_a_bounded_number_of_figures_are_written(dataset_run):
    out, _ = dataset_run
    summary = _read_csv(out / "summary.csv")
    assert {(r["method"], r["metric"]) for r in summary} >= {(m, "dice_mean") for m in METHODS}
    foreground = CLASSES[1:]
    assert {(r["method"], r["metric"]) for r in summary} >= {
        (m, f"{kind}_{c}") for m in METHODS for kind in ("epe", "tre", "strain") for c in foreground}
    truth = [r for r in summary if r["method"] == "true_field"]
    assert [r["metric"] for r in truth] == [f"strain_{c}" for c in foreground] and truth[0]["n"] == "2"
    strain = [r for r in summary if r["metric"] == "strain_lung" and r["method"] == "tissue_population"][0]
    epe = [r for r in summary if r["metric"] == "epe_lung" and r["method"] == "tissue_population"][0]
    assert strain["baseline"] == "" and epe["baseline"] == "global" and epe["n_pairs"] == "2"
    markdown = (out / "summary.md").read_text()
    assert "## Per tissue" in markdown and "| method | soft_tissue | lung | bone | liver |" in markdown
    assert "| true field |" in markdown and "epe_lung" not in markdown  # per-class columns only in the tissue tables
    compared = [r for r in summary if r["method"] == "tissue_subject" and r["metric"] == "tre_mm"]
    assert compared[0]["baseline"] == "global" and compared[0]["n_pairs"] == "2"
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["dice_per_class.png", "pair_0001_0001.png"]
    config = json.loads((out / "config.json").read_text())
    assert config["methods"] == list(METHODS) and config["class_names"] == list(CLASSES)


def test_resume_reuses_finished_rows_and_a_plain_rerun_is_refused(dataset_run, tmp_path, capsys):
    original, argv = dataset_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    argv = [*argv, "--out", str(out), "--figures", "0"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "--resume" in capsys.readouterr().err
    partial = out / ".partial" / "global" / "0002_0002.json"
    partial.write_text(json.dumps({**json.loads(partial.read_text()), "runtime_s": 123.0}))
    (out / "tissue_subject" / "disp_0002_0002.nii.gz").unlink()  # an unfinished output: that row is redone
    assert main([*argv, "--resume"]) == 0
    rows = {(r["pair_id"], r["method"]): r for r in _read_csv(out / "metrics.csv")}
    assert len(rows) == 6 and float(rows[("0002", "global")]["runtime_s"]) == 123.0
    assert (out / "tissue_subject" / "disp_0002_0002.nii.gz").is_file()


@pytest.fixture(scope="module")
def explicit_files(phantom_root, tmp_path_factory):
    """The test pair written as 2D NIfTI files already scaled to [0, 1], with labels and keypoints."""
    item = datasets.get_dataset("phantom", phantom_root, "test")[0]
    folder = tmp_path_factory.mktemp("explicit")
    affine = item["affine"].numpy()
    files = {}
    for side in ("fixed", "moving"):
        files[side] = nifti_io.write_volume(folder / f"{side}.nii.gz", item[side][0].numpy(), affine)
        files[f"{side}-labels"] = nifti_io.write_volume(folder / f"{side}_labels.nii.gz",
                                                        item[f"{side}_labels"][0].numpy().astype(np.uint8), affine)
        files[f"{side}-keypoints"] = folder / f"{side}.csv"
        np.savetxt(files[f"{side}-keypoints"], item[f"{side}_keypoints"].numpy(), delimiter=",")
    return files


def test_explicit_files_with_labels_match_the_dataset_run(explicit_files, phantom_root, trained_global,
                                                          trained_spatial, parameters_csv, tmp_path):
    common = ["--methods", "tissue_population", "--figures", "0", "--no-hd95"]
    assert main(_argv(trained_global, trained_spatial, parameters_csv, tmp_path / "data", *common,
                      "--data-root", str(phantom_root), "--split", "test")) == 0
    flags = [f"--{key}={path}" for key, path in explicit_files.items()]
    assert main(_argv(trained_global, trained_spatial, parameters_csv, tmp_path / "files", *common, *flags,
                      "--intensity", "none", "--pair-id", "0006")) == 0
    stem = "fixed_moving"
    assert (tmp_path / "files" / "tissue_population" / f"warped_labels_{stem}.nii.gz").is_file()
    from_files, _ = nifti_io.read_displacement(tmp_path / "files" / "tissue_population" / f"disp_{stem}.nii.gz")
    from_data, _ = nifti_io.read_displacement(tmp_path / "data" / "tissue_population" / "disp_0006_0006.nii.gz")
    torch.testing.assert_close(from_files, from_data)
    row_files = _read_csv(tmp_path / "files" / "metrics.csv")[0]
    row_data = _read_csv(tmp_path / "data" / "metrics.csv")[0]
    assert row_files["pair_id"] == "0006"
    for column in ("dice_mean", "dice_lung", "tre_mm", "sdlogj"):
        assert float(row_files[column]) == pytest.approx(float(row_data[column]), rel=1e-5)


@pytest.fixture(scope="module")
def vector_spatial(trained_global, tmp_path_factory):
    """The paper's spatial variant ('vector' conditioning), warm-started from the tiny global model: needs no labels."""
    global_model, _ = load_trained_model(trained_global / "checkpoints" / "last.pt")
    folder = tmp_path_factory.mktemp("vector")
    (folder / "checkpoints").mkdir()
    spatial_from_global(global_model, len(CLASSES), CLASSES, conditioning="vector").save(
        folder / "checkpoints" / "last.pt")
    return folder


def test_explicit_files_without_labels_register_and_leave_label_metrics_empty(explicit_files, trained_global,
                                                                             vector_spatial, parameters_csv,
                                                                             tmp_path):
    out = tmp_path / "out"
    assert main(_argv(trained_global, vector_spatial, parameters_csv, out, "--fixed", str(explicit_files["fixed"]),
                      "--moving", str(explicit_files["moving"]), "--intensity", "none", "--figures", "1")) == 0
    rows = _read_csv(out / "metrics.csv")
    assert [r["method"] for r in rows] == list(METHODS)
    assert {r["pair_id"] for r in rows} == {"fixed_moving"}
    assert all(r["dice_mean"] == "" and r["tre_mm"] == "" and r["hd95_mm"] == "" for r in rows)
    assert all(math.isfinite(float(r["sdlogj"])) for r in rows)
    assert rows[2]["parameters_source"] == "population"
    assert (out / "tissue_subject" / "disp_fixed_moving.nii.gz").is_file()
    assert not list(out.glob("*/warped_labels_*"))


def test_a_tissue_model_without_fixed_labels_is_refused_before_anything_is_written(explicit_files, trained_global,
                                                                                    trained_spatial, parameters_csv,
                                                                                    tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(trained_global, trained_spatial, parameters_csv, out, "--fixed", str(explicit_files["fixed"]),
                   "--moving", str(explicit_files["moving"]), "--intensity", "none"))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--fixed-labels is required" in error and "'tissue'" in error
    assert not out.exists()


@pytest.fixture(scope="module")
def renamed_dataset(phantom_root, tmp_path_factory):
    """A copy of the phantom whose class 4 is called 'kidney' and whose validation split is empty."""
    root = tmp_path_factory.mktemp("renamed") / "data"
    shutil.copytree(phantom_root, root)
    path = root / "PHANTOM_dataset.json"
    description = json.loads(path.read_text())
    description["labels"]["4"] = "kidney"
    description["registration_val"] = []
    path.write_text(json.dumps(description))
    return root


def _bad_case(case, tmp_path, phantom_root, renamed_dataset, explicit_files, trained_global, trained_spatial,
              parameters_csv):
    data = ["--data-root", str(phantom_root), "--split", "test"]
    spatial, global_ = (str(run / "checkpoints" / "last.pt") for run in (trained_spatial, trained_global))
    if case == "no-resample":
        small = nifti_io.write_volume(tmp_path / "small.nii.gz", np.zeros((32, 30), np.float32), np.eye(4))
        return "--no-resample", ["--fixed", str(explicit_files["fixed"]), "--moving", str(small), "--no-resample"]
    if case == "parameter classes":
        other = _parameters(tmp_path / "other.csv", classes=("background", "soft_tissue", "lung", "bone", "kidney"))
        return "--parameters", [*data, "--parameters", str(other)]
    if case == "global checkpoint as --spatial-model":
        return "--spatial-model", [*data, "--spatial-model", global_]
    if case == "spatial checkpoint as --global-model":
        return "--global-model", [*data, "--global-model", spatial]
    if case == "no global scope":
        scopes = {k: v for k, v in SCOPES.items() if k != "global"}
        return "--parameters", [*data, "--parameters", str(_parameters(tmp_path / "noglobal.csv", scopes))]
    if case == "dataset classes":
        return "--dataset", ["--data-root", str(renamed_dataset), "--split", "train"]
    if case == "empty split":
        return "--dataset", ["--data-root", str(renamed_dataset), "--split", "val"]
    if case == "unknown method":
        return "--methods", [*data, "--methods", "global", "tissue_magic"]
    if case == "literature without values":
        return "--literature-params", [*data, "--methods", "literature"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no-resample", "parameter classes", "global checkpoint as --spatial-model",
                                  "spatial checkpoint as --global-model", "no global scope", "dataset classes",
                                  "empty split", "unknown method", "literature without values"])
def test_bad_input_exits_2_naming_the_flag_and_writes_nothing(case, tmp_path, phantom_root, renamed_dataset,
                                                             explicit_files, trained_global, trained_spatial,
                                                             parameters_csv, capsys):
    flag, extra = _bad_case(case, tmp_path, phantom_root, renamed_dataset, explicit_files, trained_global,
                            trained_spatial, parameters_csv)
    out = tmp_path / "out"
    argv = _argv(trained_global, trained_spatial, parameters_csv, out, "--figures", "0")
    # A later flag wins in argparse, so the case's flags override the defaults above.
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *extra])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def _rows(values):
    return [{"pair_id": pair, "method": method, "dice_mean": dice, "tre_mm": tre}
            for method, table in values.items() for pair, (dice, tre) in table.items()]


def test_paired_comparison_counts_improvements_over_pairs_both_methods_have():
    rows = _rows({"global": {"a": (0.5, 2.0), "b": (0.6, 2.0), "c": (0.7, 2.0), "d": (0.2, 1.0)},
                  "tissue_subject": {"a": (0.6, 1.0), "b": (0.6, 3.0), "c": (0.8, float("nan"))}})
    dice = statistics.paired_comparison(rows, "tissue_subject", "dice_mean", "global")
    assert (dice.n_pairs, dice.improved) == (3, 2)  # the tie on b is not an improvement; d is unpaired
    assert dice.mean_difference == pytest.approx(0.2 / 3)
    tre = statistics.paired_comparison(rows, "tissue_subject", "tre_mm", "global")
    assert (tre.n_pairs, tre.improved, tre.mean_difference) == (2, 1, 0.0)  # lower is better; NaN pair dropped
    from scipy import stats
    assert dice.p_value == pytest.approx(stats.wilcoxon([0.1, 0.0, 0.1]).pvalue)
    single = statistics.paired_comparison(_rows({"global": {"a": (0.5, 1.0)}, "x": {"a": (0.7, 1.0)}}), "x", "tre_mm",
                                          "global")
    assert single.n_pairs == 1 and math.isnan(single.p_value)


def test_summary_table_reports_mean_and_sample_std_per_method():
    rows = _rows({"global": {"a": (0.5, 2.0), "b": (0.7, 4.0)}, "tissue_population": {"a": (0.6, 1.0)}})
    table = {(r["method"], r["metric"]): r for r in report.summary_table(rows, ("background",),
                                                                         ["global", "tissue_population"])}
    assert table[("global", "dice_mean")]["mean"] == pytest.approx(0.6)
    assert table[("global", "tre_mm")]["std"] == pytest.approx(math.sqrt(2.0))
    assert table[("global", "dice_mean")]["baseline"] == ""
    assert table[("tissue_population", "tre_mm")]["improved"] == 1


def test_methods_resolve_to_their_scopes_with_the_refined_population_as_fallback(tmp_path):
    from hypermorph_spatially_adaptive.stages.parameter_table import read_parameters

    refined = ([0.1] * 5, [0.3] * 5)
    table = read_parameters(_parameters(tmp_path / "p.csv", {**SCOPES, "population_refined": refined}), CLASSES)
    hyper, source = method_parameters("tissue_subject", "0042", table, "population_refined")
    assert source == "population_refined" and torch.equal(hyper, torch.tensor([refined[0] + refined[1]]))
    hyper, source = method_parameters("tissue_subject", "0001", table, "population_refined")
    assert source == "0001" and torch.equal(hyper, torch.tensor([SCOPES["0001"][0] + SCOPES["0001"][1]]))
    hyper, source = method_parameters("global", "0001", table)
    assert source == "global" and torch.allclose(hyper, torch.tensor([[0.3, 0.2]]))
    values = torch.rand(1, 10) / 2
    hyper, source = method_parameters("literature", "0001", table, literature=values)
    assert source == "literature" and torch.equal(hyper, values)


def test_summary_has_per_tissue_tables_with_the_true_fields_strain_once_per_pair():
    classes = ("background", "a", "b")
    rows = [{"pair_id": pair, "method": method, "epe_a": epe, "strain_a": strain, "gt_strain_a": truth,
             "gt_strain_b": 2 * truth}
            for method, table in {"global": {"p": (1.0, 0.1, 0.2), "q": (3.0, 0.3, 0.4)},
                                  "tissue_oracle": {"p": (0.5, 0.2, 0.2), "q": (1.5, 0.4, 0.4)}}.items()
            for pair, (epe, strain, truth) in table.items()]
    table = report.summary_table(rows, classes, ["global", "tissue_oracle"])
    cell = {(r["method"], r["metric"]): r for r in table}
    assert cell[("tissue_oracle", "epe_a")]["mean"] == pytest.approx(1.0)
    assert cell[("tissue_oracle", "epe_a")]["improved"] == 2 and cell[("tissue_oracle", "strain_a")]["baseline"] == ""
    truth = cell[("true_field", "strain_a")]
    assert (truth["n"], truth["mean"], truth["std"]) == (2, pytest.approx(0.3), pytest.approx(math.sqrt(0.02)))
    assert cell[("true_field", "strain_b")]["mean"] == pytest.approx(0.6)
    text = report.format_markdown(table, ["global", "tissue_oracle"], class_names=classes)
    tissue = text[text.index("## Per tissue"):]
    assert "| tissue_oracle | 1 ± 0.7071 | - |" in tissue and "| true field | 0.3 ± 0.1414 | 0.6 ± 0.2828 |" in tissue
    assert "TRE (mm)" not in tissue  # no keypoints: no TRE table
    assert "strain_a" not in text[:text.index("## Per tissue")]


@pytest.fixture(scope="module")
def oracle_run(phantom_root, trained_global, trained_spatial, parameters_csv, tmp_path_factory):
    """global, tissue_population and tissue_oracle on the test pair; the oracle chosen on the validation pair."""
    out = tmp_path_factory.mktemp("oracle") / "run"
    argv = _argv(trained_global, trained_spatial, parameters_csv, out, "--data-root", str(phantom_root), "--split",
                 "test", "--methods", "global", "tissue_population", "tissue_oracle", "--oracle-step", "0.2",
                 "--oracle-sweeps", "1", "--figures", "0", "--no-hd95")
    assert main(argv) == 0
    return out, argv


def test_the_oracle_lowers_the_error_on_its_pairs_and_is_written_as_a_parameter_scope(oracle_run, phantom_root,
                                                                                        trained_spatial):
    out, _ = oracle_run
    from hypermorph_spatially_adaptive.evaluation.pair_metrics import class_end_point_error
    from hypermorph_spatially_adaptive.stages.parameter_table import read_parameters

    oracle = read_parameters(out / "oracle_parameters.csv", CLASSES)
    assert oracle.scopes == ["oracle"] and {r.criterion for r in oracle.rows} == {"epe"}
    spatial, _ = load_trained_model(trained_spatial / "checkpoints" / "last.pt")
    item = datasets.get_dataset("phantom", phantom_root, "val")[0]
    spacing = tuple(item["spacing"].tolist())

    def class_epe(hyper):
        with torch.no_grad():
            field = spatial(item["moving"][None], item["fixed"][None], hyper, item["fixed_labels"][None]).displacement
        return class_end_point_error(field, item["gt_displacement"], spacing, item["fixed_labels"][0], 5)[0]

    lam, mu = SCOPES["population"]
    chosen, start = class_epe(oracle.hyper("oracle")), class_epe(torch.tensor([lam + mu]))
    assert [r.score for r in oracle.rows] == pytest.approx(chosen.tolist(), rel=1e-5)
    assert float(chosen[1:].mean()) <= float(start[1:].mean())
    assert oracle.values("oracle")[0][0] == pytest.approx(SCOPES["population"][0][0])  # the background is kept
    rows = {r["method"]: r for r in _read_csv(out / "metrics.csv")}
    assert rows["tissue_oracle"]["parameters_source"] == "oracle" and rows["tissue_oracle"]["pair_id"] == "0006"
    summary = (out / "summary.md").read_text()
    assert "tissue_oracle: an upper reference, not a method for real data" in summary
    assert "1 pair(s) of split 'val'" in summary
    assert json.loads((out / "config.json").read_text())["oracle_pair_ids"] == ["0005"]


def test_resume_reuses_the_oracles_choice(oracle_run, tmp_path, monkeypatch):
    from hypermorph_spatially_adaptive.stages.inference import stage as inference_stage
    from hypermorph_spatially_adaptive.stages.parameter_table import read_parameters

    original, argv = oracle_run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    (out / ".partial" / "tissue_oracle" / "0006_0006.json").unlink()  # the oracle's row is redone
    edited = [ParameterRow("oracle", c, name, 0.3, 0.3, "epe", 1.0) for c, name in enumerate(CLASSES)]
    write_parameters(out / "oracle_parameters.csv", edited)
    monkeypatch.setattr(inference_stage, "choose_oracle", lambda *a, **k: pytest.fail("the oracle was chosen again"))
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert read_parameters(out / "oracle_parameters.csv", CLASSES).rows == edited
    written, _ = nifti_io.read_displacement(out / "tissue_oracle" / "disp_0006_0006.nii.gz")
    before, _ = nifti_io.read_displacement(original / "tissue_oracle" / "disp_0006_0006.nii.gz")
    assert not torch.allclose(written, before)  # registered at the edited vector
    assert "reused from the interrupted run" in (out / "summary.md").read_text()


@pytest.mark.parametrize("case", ["no ground truth", "explicit files", "oracle max pairs", "empty oracle split"])
def test_oracle_without_what_it_needs_exits_2_and_writes_nothing(case, tmp_path, phantom_root, explicit_files,
                                                                trained_global, trained_spatial, parameters_csv,
                                                                capsys, monkeypatch):
    from hypermorph_spatially_adaptive.data.phantom_dataset import PhantomDataset

    data = ["--data-root", str(phantom_root), "--split", "test"]
    extra, flag = {"no ground truth": (data, "no true displacement"),
                   "explicit files": (["--fixed", str(explicit_files["fixed"]), "--moving",
                                       str(explicit_files["moving"]), "--fixed-labels",
                                       str(explicit_files["fixed-labels"]), "--moving-labels",
                                       str(explicit_files["moving-labels"])], "--data-root"),
                   "oracle max pairs": ([*data, "--oracle-max-pairs", "0"], "--oracle-max-pairs"),
                   "empty oracle split": ([*data, "--oracle-split", "nowhere"], "--oracle-split")}[case]
    if case == "no ground truth":
        monkeypatch.setattr(PhantomDataset, "has_displacement", False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(trained_global, trained_spatial, parameters_csv, out, "--methods", "tissue_oracle", *extra))
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()
