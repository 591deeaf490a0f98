"""The study runner end to end at a tiny size: every seed's stages, the report with its tables, resume, refusals."""
import pytest

from hypermorph_spatially_adaptive.stages.study import main
from hypermorph_spatially_adaptive.stages.study import presets

TINY = dict(seeds=(1,), regimes=(presets.Regime("rich", 2, 32),), subjects=6, val=1, test=1, global_steps=4,
            paper_steps=2, batch_size=2, lr=1e-3, enc_features=[4, 8], dec_features=[8, 8, 4], hyper_layers=2,
            hyper_units=16, grid_step=0.5, jobs=1, io_steps=2, io_grid_step=0.5, io_val_pairs=1,
            io_ncc_window=9, elastix=False)


@pytest.fixture()
def tiny_preset(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "tiny", TINY)


def test_a_tiny_study_writes_every_stage_and_a_report_and_resumes(tiny_preset, tmp_path, capsys):
    out, report = tmp_path / "runs", tmp_path / "docs" / "STUDY.md"
    argv = ["--preset", "tiny", "--out", str(out), "--report", str(report), "--device", "cpu"]
    assert main(argv) == 0
    seed = out / "tiny" / "rich-2d-32" / "seed1"
    for path in ("global/checkpoints/last.pt", "identification_val/parameters.csv",
                 "identification_epe/parameters.csv", "recommended/inference/metrics.csv",
                 "identification_io/parameters.csv", "recommended/inference_io/metrics.csv",
                 "identification_joint/parameters.csv", "recommended/inference_joint/metrics.csv",
                 "recommended/inference/oracle_parameters.csv", "paper/inference_epe/metrics.csv",
                 "paper/locality/locality.csv"):
        assert (seed / path).is_file(), path
    text = report.read_text()
    for needle in ("## Summary", "## Regime `rich-2d-32`", "### Locality (test pairs)", "| recommended | locality |",
                   "EPE vs control", "true field", "### What the numbers show", "the control is the global model itself",
                   "### Instance optimisation and elastix", "| `tissue_population+io` |", "| `classical` |",
                   "tissue_population+io - global+io", "tissue_joint - global", "### Regularization headroom",
                   "rank agreement, val", "rho (Young)"):
        assert needle in text, needle
    assert (report.parent / "study_figures" / "rich-2d-32_locality.png").is_file()
    stamp = (seed / "recommended" / "inference" / "metrics.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0  # a rerun finds every stage finished
    assert (seed / "recommended" / "inference" / "metrics.csv").stat().st_mtime_ns == stamp
    assert main([*argv, "--report-only"]) == 0


def test_the_development_seed_cannot_be_reported(tiny_preset, tmp_path):
    with pytest.raises(SystemExit, match="seed 0 chose the settings"):
        main(["--preset", "tiny", "--seeds", "0", "--out", str(tmp_path / "runs"), "--report",
              str(tmp_path / "STUDY.md")])
