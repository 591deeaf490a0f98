"""The demo pipeline end to end at a tiny size: every stage's outputs exist and the verdict is computed."""
import csv
import importlib.util

import pytest

from hypermorph_spatially_adaptive.stages.demo import pipeline as demo, verdict as demo_check
from hypermorph_spatially_adaptive.stages.parameter_table import ParameterRow, write_parameters

TINY = ["--size", "32", "--subjects", "6", "--val", "1", "--test", "1", "--steps", "4", "--batch-size", "2",
        "--grid-step", "0.5", "--device", "cpu", "--instance-steps", "5"]


def test_tiny_demo_writes_every_stage_and_a_rerun_skips_finished_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), *TINY]) == 0
    for path in ("data/PHANTOM_dataset.json", "global/checkpoints/last.pt", "spatial/checkpoints/last.pt",
                 "identification/grid_scores.csv", "identification/parameters.csv",
                 "identification_test_subjects/parameters.csv", "parameters_for_inference.csv",
                 "inference/metrics.csv", "inference/summary.csv", "locality/locality.csv", "demo_summary.md",
                 "config.json"):
        assert (out / path).is_file(), path
    with (out / "inference" / "metrics.csv").open() as handle:
        methods = {row["method"] for row in csv.DictReader(handle)}
    baseline = {"elastix"} if importlib.util.find_spec("itk") is not None else set()  # the optional extra
    assert methods == {"global", "tissue_population", "tissue_subject", "literature", "identity",
                       "global+io", "tissue_population+io", "identity+io"} | baseline
    assert "| tissue_population+io |" in (out / "demo_summary.md").read_text()
    summary = (out / "demo_summary.md").read_text()
    # The summary states the answer the metrics give, whichever it is.
    verdict = demo_check.judge(out / "inference" / "metrics.csv", out / "identification" / "parameters.csv")
    for baseline, beats in (("global", verdict.tissue_beats_global), ("the control", verdict.tissue_beats_control)):
        answer = {key: "yes" if flag else "NO" for key, flag in beats["tissue_population"].items()}
        assert (f"- tissue_population beats {baseline} on EPE: {answer['epe_mm']}, "
                f"on TRE: {answer['tre_mm']}") in summary
    assert f"{verdict.means['global']['epe_mm']:.3f}" in summary
    assert "| control: spatial model at the global pair |" in summary
    assert "Locality of the spatial model per class" in summary and "bone" in summary
    stamp = (out / "identification" / "parameters.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert demo.main(["--out", str(out), *TINY]) == 0
    assert (out / "identification" / "parameters.csv").stat().st_mtime_ns == stamp


def _metrics(path, values):
    columns = ["pair_id", "method", "dice_mean", "tre_mm", "epe_mm", "sdlogj", "folding_percent"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for pair, method, epe, tre in values:
            writer.writerow([pair, method, 0.9, tre, epe, 0.1, 0.0])
    return path


def test_verdict_compares_means_and_ranks_stiffness_by_lam_plus_mu(tmp_path):
    metrics = _metrics(tmp_path / "metrics.csv", [
        ("1", "global", 1.0, 2.0), ("2", "global", 3.0, 2.0),
        ("1", "tissue_population", 1.5, 1.0), ("2", "tissue_population", 2.0, 1.0),
        ("1", "tissue_subject", 2.5, 3.0), ("2", "tissue_subject", 2.5, 3.0)])
    names = ("background", "soft_tissue", "lung", "bone", "liver")
    lam_mu = [(0.1, 0.1), (0.2, 0.2), (0.1, 0.0), (0.3, 0.6), (0.2, 0.3)]
    write_parameters(tmp_path / "parameters.csv",
                     [ParameterRow("population", c, n, l, m, "dice", 0.9) for c, (n, (l, m)) in
                      enumerate(zip(names, lam_mu))])
    verdict = demo_check.judge(metrics, tmp_path / "parameters.csv")
    assert verdict.means["global"]["epe_mm"] == pytest.approx(2.0)
    assert verdict.means["tissue_population"]["epe_mm"] == pytest.approx(1.75)
    assert verdict.tissue_beats_global["tissue_population"] == {"epe_mm": True, "tre_mm": True}
    assert verdict.tissue_beats_global["tissue_subject"] == {"epe_mm": False, "tre_mm": False}
    assert verdict.stiffness_order == ("bone", "liver", "soft_tissue", "lung")
    assert verdict.bone_stiffest
    assert verdict.tissue_beats_control == {}  # no control rows


def test_verdict_compares_the_tissue_methods_with_the_control(tmp_path):
    metrics = _metrics(tmp_path / "metrics.csv", [
        ("1", "global", 2.0, 2.0), ("1", "tissue_population", 1.5, 1.0), ("1", "tissue_subject", 1.0, 3.0),
        ("1", "literature", 1.2, 1.2)])
    write_parameters(tmp_path / "parameters.csv",
                     [ParameterRow("population", c, n, 0.1 * c, 0.1, "dice", 0.9) for c, n in
                      enumerate(("background", "soft_tissue", "lung", "bone", "liver"))])
    verdict = demo_check.judge(metrics, tmp_path / "parameters.csv")
    assert verdict.tissue_beats_global["tissue_population"] == {"epe_mm": True, "tre_mm": True}
    assert verdict.tissue_beats_control["tissue_population"] == {"epe_mm": False, "tre_mm": True}
    assert verdict.tissue_beats_control["tissue_subject"] == {"epe_mm": True, "tre_mm": False}
    assert verdict.means["literature"]["epe_mm"] == pytest.approx(1.2)


def test_the_3d_preset_runs_every_stage_at_a_tiny_size(tmp_path):
    out = tmp_path / "demo3d"
    assert demo.main(["--full", "--out", str(out), "--size", "16", "--subjects", "4", "--val", "1", "--test", "1",
                      "--steps", "2", "--spatial-steps", "2", "--grid-step", "0.5", "--device", "cpu",
                      "--instance-steps", "0"]) == 0
    with (out / "inference" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["method"] for row in rows} == {"global", "tissue_population", "tissue_subject", "literature"}
    import nibabel as nib

    field = nib.load(next((out / "inference" / "global").glob("disp_*.nii.gz")))
    assert field.shape == (16, 16, 16, 3)


def test_an_existing_phantom_dataset_is_used_instead_of_a_new_one(phantom_root, tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--data-root", str(phantom_root), "--steps", "2", "--batch-size", "2",
                      "--grid-step", "0.5", "--device", "cpu"]) == 0
    assert not (out / "data").exists() and (out / "demo_summary.md").is_file()
    with pytest.raises(SystemExit, match="PHANTOM_dataset.json"):
        demo.main(["--out", str(tmp_path / "other"), "--data-root", str(tmp_path), "--device", "cpu"])


def test_the_paper_variant_must_be_trained(tmp_path):
    with pytest.raises(SystemExit, match="--spatial-steps"):
        demo.main(["--out", str(tmp_path / "demo"), "--conditioning", "vector", "--device", "cpu"])
