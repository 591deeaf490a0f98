"""Your own data end to end: a pairs CSV of mixed formats (NIfTI, MHA, NRRD, a DICOM series) through training (global,
then the spatial model built from it), identification and inference; and one pair written in every format giving
the same displacement in physical space, the same metrics, and output files that SimpleITK places on the anatomy."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TINY_MODEL_FLAGS
from file_formats import SCENE_CLASSES, write_pair, write_pairs_csv
from hypermorph_spatially_adaptive.data import image_io, nifti_io
from hypermorph_spatially_adaptive.stages import identification, inference, training

FORMATS = ["nifti", "mha", "nrrd", "dicom"]
OTHER_GRID = ((14, 18, 15), (2.3, 1.7, 2.1), (0.1, 0.25, -0.2))


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six subjects of 16^3 in mixed formats (train: NIfTI, MHA, NRRD; val: DICOM; test: MHA with the moving image on
    another grid, NRRD), and the same test pair in all four formats (``same.csv``)."""
    folder = tmp_path_factory.mktemp("own_data")
    plan = [("nifti", "train", None), ("mha", "train", None), ("nrrd", "train", None), ("dicom", "val", None),
            ("mha", "test", OTHER_GRID), ("nrrd", "test", None)]
    rows = []
    for number, (fmt, split, grid) in enumerate(plan):
        name = f"s{number}"
        cells = write_pair(folder, name, fmt, moving_grid=grid, scale=0.9 + 0.05 * number,
                           shift=(1.5 + 0.3 * number, -1.0, 1.0))
        rows.append({**cells, "split": split, "pair_id": name})
    (folder / "classes.json").write_text(json.dumps(SCENE_CLASSES))
    same = []
    for fmt in FORMATS:
        (folder / fmt).mkdir()
        cells = write_pair(folder / fmt, "case", fmt, label_fmt=fmt, moving_grid=OTHER_GRID, shift=(2.5, -1.5, 1.0))
        same.append({key: f"{fmt}/{value}" for key, value in cells.items()} | {"split": "test", "pair_id": fmt})
    return write_pairs_csv(folder / "pairs.csv", rows), write_pairs_csv(folder / "same.csv", same)


@pytest.fixture(scope="module")
def pipeline(cohort, tmp_path_factory):
    """The whole method on the cohort: global model, spatial model from it (the recommended recipe), population and
    subject-specific identification on the test pairs, inference with outputs in each fixed image's format."""
    pairs_csv, _ = cohort
    runs = tmp_path_factory.mktemp("runs")
    data = ["--dataset", "pairs", "--pairs-csv", str(pairs_csv), "--dataset-option", "classes_json=classes.json"]
    train = [*data, *TINY_MODEL_FLAGS, "--batch-size", "1", "--lr", "3e-3", "--seed", "0"]
    assert training.main("global", [*train, "--out", str(runs / "global"), "--steps", "12", "--val-every", "12"]) == 0
    assert training.main("spatial", [*train, "--out", str(runs / "spatial"), "--conditioning", "tissue",
                                     "--init-from", str(runs / "global"), "--steps", "0"]) == 0
    assert identification.main([*data, "--split", "test", "--device", "cpu", "--global-model", str(runs / "global"),
                                "--grid-step", "0.5", "--figures", "0", "--out", str(runs / "identification")]) == 0
    assert inference.main([*data, "--split", "test", "--device", "cpu", "--global-model", str(runs / "global"),
                           "--spatial-model", str(runs / "spatial"), "--figures", "1", "--output-format", "same",
                           "--parameters", str(runs / "identification" / "parameters.csv"),
                           "--out", str(runs / "inference")]) == 0
    return runs


def test_the_whole_method_runs_on_a_pairs_csv_of_mixed_formats(pipeline):
    config = json.loads((pipeline / "global" / "config.json").read_text())
    assert config["class_names"] == SCENE_CLASSES and config["inshape"] == [16, 16, 16]
    assert (pipeline / "global" / "train_curves.png").is_file()
    scopes = {row["scope"] for row in _rows(pipeline / "identification" / "parameters.csv")}
    assert {"global", "population", "s4", "s5"} <= scopes
    rows = _rows(pipeline / "inference" / "metrics.csv")
    assert sorted({(r["pair_id"], r["method"]) for r in rows}) == sorted(
        (p, m) for p in ("s4", "s5") for m in ("global", "tissue_population", "tissue_subject"))
    assert all(0 < float(r["dice_mean"]) <= 1 and float(r["tre_mm"]) > 0 for r in rows)
    # Outputs in the fixed image's format: s4 is an MHA pair, s5 an NRRD pair.
    assert (pipeline / "inference" / "tissue_subject" / "disp_s4.mha").is_file()
    assert (pipeline / "inference" / "global" / "warped_labels_s5.nrrd").is_file()
    assert (pipeline / "inference" / "figures" / "pair_s4.png").is_file()


@pytest.fixture(scope="module")
def same_pair(cohort, pipeline):
    """The pair written in every format, registered with --output-format same."""
    _, same_csv = cohort
    out = pipeline / "same_pair"
    assert inference.main(["--dataset", "pairs", "--pairs-csv", str(same_csv), "--dataset-option",
                           f"class_names={json.dumps(SCENE_CLASSES)}", "--split", "test", "--device", "cpu",
                           "--global-model", str(pipeline / "global"), "--spatial-model", str(pipeline / "spatial"),
                           "--parameters", str(pipeline / "identification" / "parameters.csv"),
                           "--methods", "global", "tissue_population", "--figures", "0", "--output-format", "same",
                           "--out", str(out)]) == 0
    return out


def _physical_field(out, method, fmt):
    """The written displacement of ``fmt``'s pair as RAS millimetres ``[*S, 3]`` and the fixed grid's affine."""
    if fmt == "nifti":
        field, affine = nifti_io.read_displacement(out / method / "disp_nifti.nii.gz")
        field = field.numpy().astype(np.float64)
    else:
        field, affine = image_io.read_displacement(out / method / f"disp_{fmt}.mha" if fmt != "nrrd"
                                                   else out / method / "disp_nrrd.nrrd")
    return np.einsum("ij,j...->...i", np.asarray(affine)[:3, :3], field), np.asarray(affine)


def test_every_format_gives_the_same_physical_displacement_and_metrics(same_pair):
    for method in ("global", "tissue_population"):
        reference, affine = _physical_field(same_pair, method, "nifti")
        assert np.abs(reference).max() > 0.05  # a field worth comparing (mm)
        for fmt in FORMATS[1:]:
            field, other_affine = _physical_field(same_pair, method, fmt)
            np.testing.assert_allclose(other_affine, affine, atol=1e-4)
            assert np.abs(field - reference).max() < 1e-4, (method, fmt, np.abs(field - reference).max())
    rows = {(r["pair_id"], r["method"]): r for r in _rows(same_pair / "metrics.csv")}
    for method in ("global", "tissue_population"):
        for key in ("dice_mean", "hd95_mm", "tre_mm", "sdlogj", "folding_percent"):
            values = [float(rows[(fmt, method)][key]) for fmt in FORMATS]
            assert max(values) - min(values) < 1e-4, (method, key, values)


def test_written_files_sit_on_the_fixed_anatomy_for_simpleitk(same_pair, cohort):
    folder = cohort[1].parent
    fixed = sitk.ReadImage(str(folder / "mha" / "case_fixed.mha"))
    moving_labels = sitk.ReadImage(str(folder / "mha" / "case_moving_labels.mha"))
    for fmt, ending in (("mha", ".mha"), ("nrrd", ".nrrd"), ("dicom", ".mha"), ("nifti", ".nii.gz")):
        warped = sitk.ReadImage(str(same_pair / "global" / f"warped_{fmt}{ending}"))
        assert warped.GetSize() == fixed.GetSize()
        for index in [(0, 0, 0), (15, 3, 7), (4, 15, 15)]:
            np.testing.assert_allclose(warped.TransformIndexToPhysicalPoint(index),
                                       fixed.TransformIndexToPhysicalPoint(index), atol=1e-4)
    # The written ITK displacement field, applied by SimpleITK to the moving labels carried onto the fixed grid (as
    # the project does before registering), gives exactly the written warped labels.
    field = sitk.Cast(sitk.ReadImage(str(same_pair / "global" / "disp_mha.mha")), sitk.sitkVectorFloat64)
    on_fixed = sitk.Resample(moving_labels, fixed, sitk.Transform(), sitk.sitkNearestNeighbor)
    resampled = sitk.Resample(on_fixed, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkNearestNeighbor)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(same_pair / "global" / "warped_labels_mha.mha")))
    assert (sitk.GetArrayFromImage(resampled) == ours).mean() > 0.999
