import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hypermorph_spatially_adaptive import HyperVxmDense
from hypermorph_spatially_adaptive.core import objective
from hypermorph_spatially_adaptive.core.hyperparams import nb_hyp_params
from hypermorph_spatially_adaptive.stages.training import LOG_COLUMNS, main

REPO = Path(__file__).resolve().parents[2]


def _train(model_type, root, out, flags, *extra):
    argv = ["--dataset", "phantom", "--data-root", str(root), "--out", str(out), *flags, *extra]
    return main(model_type, argv)


@pytest.mark.parametrize("model_type", ["global", "spatial"])
def test_help_lists_the_documented_flags(model_type, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(model_type, ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-root", "--split", "--out", "--device", "--seed", "--config", "--epochs",
                 "--steps", "--batch-size", "--lr", "--resume", "--amp", "--workers"):
        assert flag in text


@pytest.mark.parametrize("model_type,regularizer", [("global", "elastic"), ("global", "diffusion"), ("global", "bending"),
                                                    ("spatial", "elastic"), ("spatial", "diffusion"),
                                                    ("spatial", "bending")])
def test_tiny_run_writes_the_documented_outputs(model_type, regularizer, phantom_root, tmp_path, tiny_flags):
    out = tmp_path / model_type
    assert _train(model_type, phantom_root, out, tiny_flags, "--steps", "3", "--batch-size", "2",
                  "--regularizer", regularizer, "--val-every", "2", "--log-every", "1") == 0
    config = json.loads((out / "config.json").read_text())
    assert (out / "train_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert config["model_type"] == model_type and config["regularizer"] == regularizer
    assert config["options"]["steps"] == 3 and "torch" in config["software"]
    with (out / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    foreground = config["class_names"][1:] if model_type == "spatial" else []
    locality = [f"val_locality_{name}" for name in foreground] + [f"val_leakage_{name}" for name in foreground]
    assert tuple(rows[0].keys()) == LOG_COLUMNS[:-1] + tuple(locality) + LOG_COLUMNS[-1:]
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert rows[1]["val_dice"] != "" and rows[0]["val_dice"] == ""
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    for key in ("config", "model_state", "optimizer_state", "step", "epoch", "rng", "model_config"):
        assert key in checkpoint
    assert checkpoint["step"] == 3
    model = HyperVxmDense.load(out / "checkpoints" / "best.pt")
    assert (model.kind.model_type, model.kind.regularizer) == (model_type, regularizer)  # recorded, not guessed
    assert list(model.kind.class_names) == config["class_names"]
    classes = len(config["class_names"]) if model_type == "spatial" else 1
    assert model.nb_hyp_params == nb_hyp_params(regularizer, classes)
    moving = fixed = torch.rand(1, 1, 32, 32)
    labels = torch.randint(0, classes, (1, 1, 32, 32))
    output = model(moving, fixed, torch.full((1, model.nb_hyp_params), 0.2), labels)
    assert output.displacement.shape == (1, 2, 32, 32)
    if model_type == "spatial":
        assert config["conditioning"] == model.conditioning == "tissue"  # the default variant
        assert all(rows[1][column] != "" for column in locality)


def test_resume_gives_the_same_weights_as_a_straight_run(phantom_root, tmp_path, tiny_flags):
    common = [*tiny_flags, "--batch-size", "2", "--val-split", "none", "--seed", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train("spatial", phantom_root, straight, common, "--steps", "6")
    _train("spatial", phantom_root, split, common, "--steps", "3")  # 4 training pairs -> 2 steps per epoch
    _train("spatial", phantom_root, split, common, "--steps", "6", "--resume")
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=False)
    assert b["step"] == 6
    for key, value in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][key], value, rtol=1e-5, atol=1e-6)
    with (split / "train_log.csv").open() as handle:
        # each run logs its last step; the resumed run appends
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [3, 6]


def test_a_second_run_into_the_same_folder_needs_resume(phantom_root, tmp_path, tiny_flags, capsys):
    _train("global", phantom_root, tmp_path / "run", tiny_flags, "--steps", "1", "--val-split", "none")
    with pytest.raises(SystemExit) as exit_info:
        _train("global", phantom_root, tmp_path / "run", tiny_flags, "--steps", "1", "--val-split", "none")
    assert exit_info.value.code == 2
    assert "--resume" in capsys.readouterr().err


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(phantom_root, tmp_path, tiny_flags,
                                                                          monkeypatch, capsys):
    real_loss, calls = objective.ncc_loss, []

    def failing_loss(*args, **kwargs):
        calls.append(1)
        value = real_loss(*args, **kwargs)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(objective, "ncc_loss", failing_loss)
    with pytest.raises(SystemExit) as exit_info:
        _train("global", phantom_root, tmp_path / "run", tiny_flags, "--steps", "5", "--checkpoint-every", "1",
               "--val-split", "none")
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "nan" in message.lower() and "step 3" in message and "last.pt" in message
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["model_state"].values())


@pytest.mark.parametrize("flags,needle", [
    (["--dataset", "nosuch"], "nosuch"),
    (["--data-root", "/does/not/exist"], "--data-root"),
    (["--data-root", str(Path(__file__).parent)], "dataset description not found"),  # a folder without the data
    (["--image-size", "32", "32", "32"], "--image-size"),
    (["--batch-size", "64"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
])
def test_bad_config_fails_before_the_first_step(flags, needle, phantom_root, tmp_path, tiny_flags, capsys):
    argv = ["--dataset", "phantom", "--data-root", str(phantom_root), "--out", str(tmp_path / "run"),
            *tiny_flags, "--steps", "2", *flags]
    with pytest.raises(SystemExit) as exit_info:
        main("global", argv)
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_file_supplies_defaults_that_flags_override(phantom_root, tmp_path, tiny_flags):
    config = tmp_path / "train.yaml"
    config.write_text(f"data_root: {phantom_root}\nsteps: 2\nlr: 0.001\nval-split: none\n")
    out = tmp_path / "run"
    assert main("global", ["--config", str(config), "--out", str(out), "--steps", "1", *tiny_flags]) == 0
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["steps"] == 1 and options["lr"] == 0.001 and options["data_root"] == str(phantom_root)


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text('{"learning_rate": 0.1}')
    with pytest.raises(SystemExit):
        main("global", ["--config", str(config)])
    assert "learning_rate" in capsys.readouterr().err


def _script_env():
    # Keep an existing PYTHONPATH: dependencies may be installed through it rather than into the interpreter.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def test_sigkill_during_training_leaves_a_loadable_checkpoint(phantom_root, tmp_path, tiny_flags):
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "train_hypermorph_global.py"), "--dataset", "phantom", "--data-root",
               str(phantom_root), "--out", str(out), *tiny_flags, "--steps", "100000", "--checkpoint-every", "1",
               "--val-split", "none"]
    process = subprocess.Popen(command, env=_script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.pt"
    try:
        deadline = time.time() + 120
        while not last.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        time.sleep(1.5)  # let it overwrite last.pt several times, then kill at an arbitrary point
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert last.exists()
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["step"] >= 1
    HyperVxmDense.load(last)


def test_two_process_gloo_training_keeps_replicas_identical(phantom_root, tmp_path, tiny_flags):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train_hypermorph_global.py"), "--dataset", "phantom", "--data-root", str(phantom_root),
               "--out", str(out), *tiny_flags, "--steps", "3", "--val-split", "none"]
    result = subprocess.run(command, env=_script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas["world_size"] == 2
    assert replicas["max_abs_weight_difference"] == 0.0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 3


def test_spatial_training_can_start_from_the_global_model(phantom_root, trained_global, trained_spatial, tmp_path,
                                                          tiny_flags, capsys):
    out = tmp_path / "warm"
    flags = [*tiny_flags, "--steps", "1", "--lr", "1e-12", "--val-split", "none", "--hyper-units", "7"]
    _train("spatial", phantom_root, out, flags, "--init-from", str(trained_global / "checkpoints" / "last.pt"))
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["hyper_units"] == 16  # the global checkpoint's width, not the flag's
    warm = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model_state"]
    start = torch.load(trained_global / "checkpoints" / "last.pt", weights_only=False)["model_state"]
    torch.testing.assert_close(warm["unet.encoder.0.weight_head.bias"], start["unet.encoder.0.weight_head.bias"])
    with pytest.raises(SystemExit) as exit_info:
        _train("spatial", phantom_root, tmp_path / "bad", flags,
               "--init-from", str(trained_spatial / "checkpoints" / "last.pt"))
    assert exit_info.value.code == 2 and "--init-from" in capsys.readouterr().err


def test_zero_steps_from_a_global_model_write_it_as_a_tissue_model_validated_once(phantom_root, trained_global,
                                                                                 tmp_path, tiny_flags, capsys):
    out = tmp_path / "converted"
    assert _train("spatial", phantom_root, out, tiny_flags, "--steps", "0", "--init-from", str(trained_global)) == 0
    with (out / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["0"] and rows[0]["val_dice"] != "" and rows[0]["val_locality_bone"]
    spatial = HyperVxmDense.load(out / "checkpoints" / "last.pt").eval()
    global_model = HyperVxmDense.load(trained_global / "checkpoints" / "last.pt").eval()
    assert spatial.conditioning == "tissue" and (out / "checkpoints" / "best.pt").is_file()
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    labels = torch.randint(0, 5, (1, 1, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(spatial(moving, fixed, torch.tensor([[0.3] * 5 + [0.2] * 5]), labels).velocity,
                                   global_model(moving, fixed, torch.tensor([[0.3, 0.2]])).velocity)
    with pytest.raises(SystemExit) as exit_info:
        _train("spatial", phantom_root, tmp_path / "untrained", tiny_flags, "--steps", "0")
    assert exit_info.value.code == 2 and "--steps must be a positive" in capsys.readouterr().err


@pytest.mark.parametrize("step,expected", [(0, 1e-3), (50, 5e-4), (100, 0.0)])
def test_cosine_schedule_decays_from_the_base_rate_to_zero(step, expected):
    from hypermorph_spatially_adaptive.stages.training import scheduled_lr

    assert scheduled_lr(1e-3, "cosine", step, 100) == pytest.approx(expected, abs=1e-12)
    assert scheduled_lr(1e-3, "constant", step, 100) == 1e-3


@pytest.fixture(scope="module")
def without_val_pairs(tmp_path_factory):
    """A phantom written without validation pairs (5 subjects: 4 train, 1 test)."""
    from hypermorph_spatially_adaptive.data import phantom

    root = tmp_path_factory.mktemp("no_val") / "data"
    phantom.write_dataset(root, ndim=2, subjects=5, shape=(32, 32), seed=1, val=0, test=1, progress=False)
    return root


def test_a_dataset_without_validation_pairs_trains_without_validation_when_none_was_asked_for(
        without_val_pairs, tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    assert _train("global", without_val_pairs, out, tiny_flags, "--steps", "2", "--batch-size", "2") == 0
    assert "validation disabled" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["options"]["val_split"] == "none"
    with (out / "train_log.csv").open() as handle:
        assert all(row["val_dice"] == "" for row in csv.DictReader(handle))


def test_an_explicit_validation_split_without_pairs_is_an_error(without_val_pairs, tmp_path, tiny_flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _train("global", without_val_pairs, tmp_path / "run", tiny_flags, "--steps", "2", "--val-split", "val")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--val-split val" in error and "has no pairs" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_broken_validation_split_is_an_error_not_a_silently_skipped_validation(phantom_root, tmp_path, tiny_flags,
                                                                                 capsys):
    # Before, any message containing "split" disabled validation, and best.pt silently became the last weights.
    broken = tmp_path / "broken"
    shutil.copytree(phantom_root, broken)
    description = json.loads((broken / "PHANTOM_dataset.json").read_text())
    fixed_image = broken / description["registration_val"][0]["fixed"]
    fixed_image.unlink()
    with pytest.raises(SystemExit) as exit_info:
        _train("global", broken, tmp_path / "run", tiny_flags, "--steps", "2")
    assert exit_info.value.code == 2
    assert fixed_image.name in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tensorboard_without_the_package_exits_2_before_writing(phantom_root, tmp_path, tiny_flags, monkeypatch,
                                                               capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when it is not installed
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        _train("global", phantom_root, out, tiny_flags, "--steps", "2", "--tensorboard")
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--tensorboard needs the tensorboard package" in error
    assert "elastic-hypermorph[tensorboard]" in error and not out.exists()


def test_tensorboard_events_hold_the_log_columns(phantom_root, tmp_path, tiny_flags):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert _train("global", phantom_root, out, tiny_flags, "--steps", "2", "--batch-size", "2", "--log-every", "1",
                  "--val-every", "2", "--tensorboard") == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss", "similarity", "regularization", "val_dice"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_curves_are_redrawn_from_the_log(tmp_path):
    from hypermorph_spatially_adaptive.stages.training.curves import write_curves

    log = tmp_path / "train_log.csv"
    log.write_text("step,epoch,loss,similarity,regularization,val_dice,val_tre_mm,val_folding_percent,time_s\n")
    assert write_curves(log, tmp_path / "curves.png") is None and not (tmp_path / "curves.png").exists()
    with log.open("a") as handle:
        handle.write("1,0,0.5,0.4,0.01,,,,1.0\n2,0,0.4,0.3,0.02,0.8,1.5,0.0,2.0\n")
    assert write_curves(log, tmp_path / "curves.png").stat().st_size > 1000
