"""--dry-run on every stage: it resolves the run, times a short warm-up, prints the plan, exits 0 and writes nothing
(no output folder)."""
import re

import pytest

from hypermorph_spatially_adaptive.stages import demo, identification, inference, training
from hypermorph_spatially_adaptive.stages.parameter_table import ParameterRow, write_parameters
from hypermorph_spatially_adaptive.stages.plan import format_bytes, format_duration

CLASSES = ("background", "soft_tissue", "lung", "bone", "liver")
MEASURED = re.compile(r"[\d.e+-]+ s per (step|chunk|pair) .* -> about .* for \d+ (step|chunk|pair)")
MEMORY = re.compile(r"\d+(\.\d+)? (MiB|GiB) (peak resident memory of the process|CUDA peak allocated by torch) "
                    r"\(\+\d+(\.\d+)? (MiB|GiB) during the warm-up\)")


def _check_plan(text, out, *expected):
    assert "dry run:" in text and "nothing is written" in text
    assert MEASURED.search(text), text
    assert MEMORY.search(text), text
    for fragment in expected:
        assert fragment in text, (fragment, text)
    assert not out.exists(), f"the dry run created {out}"


@pytest.mark.parametrize("model_type", ["global", "spatial"])
def test_training(model_type, phantom_root, tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    argv = ["--dataset", "phantom", "--data-root", str(phantom_root), "--out", str(out), *tiny_flags, "--steps", "40",
            "--batch-size", "2", "--dry-run"]
    assert training.main(model_type, argv) == 0
    _check_plan(capsys.readouterr().out, out, "4 pairs; validation: 1", "40 (batch 2, 2 steps per epoch)",
                "parameters", "2D 32x32 voxels of")


def test_identification(phantom_root, trained_global, tmp_path, capsys):
    out = tmp_path / "identification"
    argv = ["--dataset", "phantom", "--data-root", str(phantom_root), "--split", "train", "--device", "cpu",
            "--global-model", str(trained_global), "--out", str(out), "--grid-step", "0.25", "--dry-run"]
    assert identification.main(argv) == 0
    _check_plan(capsys.readouterr().out, out, "4 (0001, 0002", "15 (lam, mu) points, 4 per forward pass",
                "for 16 chunks")


def test_inference(phantom_root, trained_global, trained_spatial, tmp_path, capsys):
    rows = [ParameterRow(scope, c, CLASSES[c], 0.2, 0.1, "dice", 0.5) for scope in ("global", "population")
            for c in range(len(CLASSES))]
    parameters = write_parameters(tmp_path / "parameters.csv", rows)
    out = tmp_path / "inference"
    argv = ["--dataset", "phantom", "--data-root", str(phantom_root), "--split", "train", "--device", "cpu",
            "--global-model", str(trained_global), "--spatial-model", str(trained_spatial),
            "--parameters", str(parameters), "--out", str(out), "--dry-run"]
    assert inference.main(argv) == 0
    _check_plan(capsys.readouterr().out, out, "global", "tissue_population", "tissue_subject", "for 4 pairs",
                "volumes as nifti")


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--device", "cpu", "--size", "16", "--subjects", "6", "--val", "1", "--test", "1",
            "--steps", "7", "--spatial-steps", "3", "--batch-size", "1", "--dry-run"]
    assert demo.main(argv) == 0
    _check_plan(capsys.readouterr().out, out, "6 2D subjects of 16x16 (4 train, 1 val, 1 test)", "for 7 steps",
                "for 3 steps")


def test_bad_input_still_fails_with_exit_2_before_the_plan(phantom_root, tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        training.main("global", ["--dataset", "phantom", "--data-root", str(tmp_path / "none"), "--out", str(out),
                                 *tiny_flags, "--dry-run"])
    assert exit_info.value.code == 2 and "--data-root" in capsys.readouterr().err and not out.exists()


def test_durations_and_sizes_read_naturally():
    assert format_duration(12.345) == "12.3 s" and format_duration(93.2) == "1 min 33 s"
    assert format_duration(3 * 3600 + 125) == "3 h 2 min" and format_duration(2 * 86400 + 3600) == "2 d 1 h"
    assert format_bytes(3 * 2 ** 20) == "3 MiB" and format_bytes(2.5 * 2 ** 30) == "2.50 GiB"
