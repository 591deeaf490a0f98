"""parameter_identification.py --score-with instance on the tiny 2D phantom of conftest."""
import csv

import pytest

from hypermorph_spatially_adaptive.stages.identification import main


def _base(phantom_root, trained_global, out):
    return ["--dataset", "phantom", "--data-root", str(phantom_root), "--split", "train", "--max-pairs", "2",
            "--global-model", str(trained_global), "--lam-values", "0.05", "0.3", "--mu-values", "0.05", "0.3",
            "--device", "cpu", "--figures", "0", "--out", str(out)]


def test_grid_points_scored_through_the_optimisation_choose_every_scope(phantom_root, trained_global, tmp_path):
    out = tmp_path / "run"
    argv = [*_base(phantom_root, trained_global, out), "--score-with", "instance", "--instance-steps", "15",
            "--instance-levels", "2", "1", "--criterion", "tre"]
    assert main(argv) == 0
    with open(out / "grid_scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == 2 * 4 * 5  # pairs x grid points x classes
    dice = {(r["pair_id"], r["lam"], r["mu"]): float(r["dice"]) for r in scores if r["class_name"] == "lung"}
    assert len(set(dice.values())) > 1  # the points register differently
    with open(out / "parameters.csv", newline="") as handle:
        scopes = {r["scope"] for r in csv.DictReader(handle)}
    assert {"global", "population", "0001", "0002"} <= scopes


@pytest.mark.parametrize("extra, flag", [(["--instance-steps", "0"], "--instance-steps"),
                                         (["--instance-levels", "2", "2", "1"], "--instance-levels"),
                                         (["--instance-ncc-window", "1"], "--instance-ncc-window")])
def test_bad_optimisation_settings_exit_2_naming_the_flag(extra, flag, phantom_root, trained_global, tmp_path,
                                                          capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*_base(phantom_root, trained_global, out), "--score-with", "instance", *extra])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err
    assert not out.exists()
