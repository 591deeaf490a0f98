"""The locality stage: locality.csv of a spatial checkpoint on a dataset split, and its bad-input errors."""
import csv
import math

import pytest

from hypermorph_spatially_adaptive.stages.locality import COLUMNS, main
from hypermorph_spatially_adaptive.stages.locality.command import build_parser, measure


def _argv(phantom_root, model, out, *extra):
    return ["--dataset", "phantom", "--data-root", str(phantom_root), "--split", "train", "--spatial-model",
            str(model), "--out", str(out), "--device", "cpu", *extra]


def test_locality_csv_has_one_row_per_foreground_class(phantom_root, trained_spatial, tmp_path, capsys):
    out = tmp_path / "locality"
    assert main(_argv(phantom_root, trained_spatial, out, "--max-pairs", "2")) == 0
    with (out / "locality.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [row["class_name"] for row in rows] == ["soft_tissue", "lung", "bone", "liver"]
    assert all(row["pairs"] == "2" and math.isfinite(float(row["locality"])) for row in rows)
    assert (out / "config.json").is_file() and "locality" in capsys.readouterr().out


def test_a_warm_started_tissue_model_acts_where_its_classes_are(phantom_root, trained_global, tmp_path):
    """With each tissue at the global model's kernels for its own values, leakage stays below locality."""
    from hypermorph_spatially_adaptive.models.networks import spatial_from_global
    from hypermorph_spatially_adaptive.models.trained import load_trained_model

    global_model, _ = load_trained_model(trained_global)
    names = ("background", "soft_tissue", "lung", "bone", "liver")
    (tmp_path / "tissue" / "checkpoints").mkdir(parents=True)
    spatial_from_global(global_model, 5, names, conditioning="tissue").save(tmp_path / "tissue" / "checkpoints"
                                                                            / "last.pt")
    args = build_parser().parse_args(_argv(phantom_root, tmp_path / "tissue", tmp_path / "out"))
    result, _ = measure(args)
    for locality, leakage in zip(result.locality, result.leakage):
        assert leakage < locality


@pytest.mark.parametrize("extra, needle", [(["--max-pairs", "0"], "--max-pairs"),
                                           (["--base-params", "0.8", "0.5"], "--base-params"),
                                           (["--split", "nope"], "split")])
def test_bad_input_exits_2_naming_the_option_and_writes_nothing(phantom_root, trained_spatial, tmp_path, capsys,
                                                                extra, needle):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(phantom_root, trained_spatial, out, *extra))
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err and not out.exists()


def test_a_global_model_is_refused(phantom_root, trained_global, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(phantom_root, trained_global, tmp_path / "out"))
    assert exit_info.value.code == 2 and "--spatial-model" in capsys.readouterr().err
