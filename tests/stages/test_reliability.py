"""Runs that cannot corrupt each other: every bad input of a careless or hostile user exits 2 with one line naming
the option or file, writes nothing and damages nothing; two runs into one folder never both proceed."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hypermorph_spatially_adaptive import HyperVxmDense
from hypermorph_spatially_adaptive.models.checkpoints import read_checkpoint
from hypermorph_spatially_adaptive.stages import identification, inference, locality, training
from hypermorph_spatially_adaptive.stages.cli import error_message
from hypermorph_spatially_adaptive.stages.run_folder import LOCK_NAME, OutputLock

from conftest import TINY_MODEL_FLAGS

REPO = Path(__file__).resolve().parents[2]
MAINS = {"train": lambda argv: training.main("global", argv), "identify": identification.main,
         "infer": inference.main, "locality": locality.main}


def _train_argv(data, out, *extra):
    return ["--dataset", "phantom", "--data-root", str(data), "--out", str(out), *TINY_MODEL_FLAGS, "--steps", "2",
            "--batch-size", "2", "--val-split", "none", *extra]


def _identify_argv(data, model, out, *extra):
    return ["--data-root", str(data), "--split", "val", "--global-model", str(model), "--grid-step", "0.5",
            "--figures", "0", "--device", "cpu", "--out", str(out), *extra]


def _infer_argv(data, runs, out, *extra, parameters=None):
    return ["--data-root", str(data), "--split", "test", "--spatial-model", str(runs["spatial"]),
            "--global-model", str(runs["global"]), "--parameters", str(parameters or runs["parameters"]),
            "--figures", "0", "--no-hd95", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def runs(phantom_root, trained_global, trained_spatial, tmp_path_factory):
    """Finished runs of every stage to resume or aim at: training (constant and cosine), identification,
    inference."""
    folder = tmp_path_factory.mktemp("reliability")
    found = {"global": trained_global, "spatial": trained_spatial}
    for name, extra in (("training", []), ("training_cosine", ["--lr-schedule", "cosine"])):
        found[name] = folder / name
        assert MAINS["train"](_train_argv(phantom_root, found[name], *extra)) == 0
    found["identification"] = folder / "identification"
    assert MAINS["identify"](_identify_argv(phantom_root, trained_global, found["identification"])) == 0
    found["parameters"] = found["identification"] / "parameters.csv"
    found["inference"] = folder / "inference"
    assert MAINS["infer"](_infer_argv(phantom_root, found, found["inference"])) == 0
    return found


def _copy(source, target):
    shutil.copytree(source, target)
    return target


def _copy_data(phantom_root, tmp_path):
    return _copy(phantom_root, tmp_path / "data")


def _edit_description(data, edit):
    path = data / "PHANTOM_dataset.json"
    description = json.loads(path.read_text())
    edit(description)
    path.write_text(json.dumps(description))


def _rewrite_volume(path, change):
    image = nib.load(str(path))
    array = np.asarray(image.get_fdata(), dtype=np.float32)
    change(array)
    nib.save(nib.Nifti1Image(array, image.affine), str(path))


def _first(data, folder, pattern):
    return sorted((data / folder).glob(pattern))[0]


def _config(tmp_path, text):
    path = tmp_path / "options.yaml"
    path.write_text(text)
    return path


def _unwritable(tmp_path):
    if os.geteuid() == 0:
        return Path("/sys/hypermorph_reliability_test")  # sysfs refuses new folders, even to root
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked / "run"


PHANTOM_CLASSES = '["background", "soft_tissue", "lung", "bone", "liver"]'


def _pairs_csv(data, tmp, **cells):
    """A pairs CSV of the phantom's first pair (absolute paths) with ``cells`` replacing or adding columns."""
    row = {"fixed": data / "imagesTr" / "PHANTOM_0001_0000.nii.gz", "moving": data / "imagesTr" /
           "PHANTOM_0001_0001.nii.gz", "fixed_labels": data / "labelsTr" / "PHANTOM_0001_0000.nii.gz",
           "moving_labels": data / "labelsTr" / "PHANTOM_0001_0001.nii.gz", **cells}
    path = tmp / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(row))
        writer.writeheader()
        writer.writerow(row)
    return path


def _pairs_argv(pairs):
    return ["--dataset", "pairs", "--pairs-csv", str(pairs), "--dataset-option", f"class_names={PHANTOM_CLASSES}"]


def _identify_pairs_argv(pairs, model, out, *extra):
    argv = _identify_argv("unused", model, out, *extra)
    return _pairs_argv(pairs) + argv[2:]


# Each case: (stage, argv, the text the one-line error must contain); it may prepare files under tmp_path.
def _case(name, runs, data, tmp):
    out = tmp / "run"
    if name == "resume training with another --data-root":
        return "train", _train_argv(_copy_data(data, tmp), _copy(runs["training"], out), "--resume"), "--data-root"
    if name == "resume training with another --seed":
        return "train", _train_argv(data, _copy(runs["training"], out), "--resume", "--seed", "7"), "--seed 0 (now 7)"
    if name == "resume training with another --lr":
        return "train", _train_argv(data, _copy(runs["training"], out), "--resume", "--lr", "0.5"), "--lr"
    if name == "resume training with another --lr-schedule":
        return ("train", _train_argv(data, _copy(runs["training"], out), "--resume", "--lr-schedule", "cosine"),
                "--lr-schedule constant (now cosine)")
    if name == "resume a cosine schedule with other --steps":
        return ("train", _train_argv(data, _copy(runs["training_cosine"], out), "--resume", "--lr-schedule",
                                     "cosine", "--steps", "4"), "--steps 2 (now 4)")
    if name == "resume identification after its model file was replaced":
        model = tmp / "model.pt"
        shutil.copy(runs["global"] / "checkpoints" / "last.pt", model)
        assert MAINS["identify"](_identify_argv(data, model, out)) == 0
        state = torch.load(model, weights_only=False)
        state["model_state"]["flow.bias"] += 0.1
        torch.save(state, model)
        return "identify", _identify_argv(data, model, out, "--resume"), "--global-model"
    if name == "resume inference with another --parameters":
        other = tmp / "other.csv"
        other.write_text(runs["parameters"].read_text().replace("dice", "dice "))
        return "infer", _infer_argv(data, runs, _copy(runs["inference"], out), "--resume", parameters=other), \
            "--parameters"
    if name == "resume a folder without run.json":
        _copy(runs["inference"], out)
        (out / "run.json").unlink()
        return "infer", _infer_argv(data, runs, out, "--resume"), "no run.json"
    if name == "config steps: 2.7":
        return "train", _without_steps(_train_argv(data, out, "--config", str(_config(tmp, "steps: 2.7\n")))), \
            "'steps': invalid int value: '2.7'"
    if name == "config steps: true":
        return "train", _without_steps(_train_argv(data, out, "--config", str(_config(tmp, "steps: true\n")))), \
            "'steps'"
    if name == "config amp: 'no'":
        return "train", _train_argv(data, out, "--config", str(_config(tmp, "amp: 'no'\n"))), "'amp' is a switch"
    if name == "config criterion: bogus":
        return "identify", _identify_argv(data, runs["global"], out, "--config",
                                          str(_config(tmp, "criterion: bogus\n"))), "'criterion': invalid choice"
    if name == "identification into a training folder":
        return "identify", _identify_argv(data, runs["global"], _copy(runs["training"], out)), \
            "holds the outputs of the training stage"
    if name == "inference into an identification folder":
        return "infer", _infer_argv(data, runs, _copy(runs["identification"], out)), \
            "holds the outputs of the identification stage"
    if name == "training into a folder of other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return "train", _train_argv(data, out), "holds files that no stage wrote"
    if name == "truncated image":
        copy = _copy_data(data, tmp)
        path = _first(copy, "imagesTr", "*_0001.nii.gz")
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
        return "train", _train_argv(copy, out), path.name
    if name == "NaN voxels":
        copy = _copy_data(data, tmp)
        path = _first(copy, "imagesTr", "*_0000.nii.gz")
        _rewrite_volume(path, lambda a: a.__setitem__((3, 3), np.nan))
        return "train", _train_argv(copy, out), f"{path.name}: 1 voxel value(s) are NaN"
    if name == "NaN in a true displacement":
        copy = _copy_data(data, tmp)
        path = _first(copy, "groundtruthTr", "disp_0006*.nii.gz")
        _rewrite_volume(path, lambda a: a.__setitem__((3, 3), np.nan))
        return "infer", _infer_argv(copy, runs, out), path.name
    if name.startswith("--out is a file"):
        out.write_text("not a folder")
        stage = name.split()[-1]
        return stage, _stage_argv(stage, data, runs, out), "is a file, not a folder"
    if name.startswith("--out cannot be written"):
        stage = name.split()[-1]
        return stage, _stage_argv(stage, data, runs, _unwritable(tmp)), "--out"
    if name.startswith("pair entry"):
        copy = _copy_data(data, tmp)
        value = {"number": 5, "null": None, "a number as file": {"fixed": 5, "moving": None}}[name[len("pair entry "):]]
        _edit_description(copy, lambda d: d["registration_test"].__setitem__(0, value))
        return "infer", _infer_argv(copy, runs, out), "PHANTOM_dataset.json"
    if name.startswith("pair path"):
        copy = _copy_data(data, tmp)
        entry = json.loads((copy / "PHANTOM_dataset.json").read_text())["registration_test"][0]
        outside = tmp / "elsewhere" / "imagesTr"
        outside.mkdir(parents=True)
        shutil.copy(copy / entry["fixed"], outside)
        path = outside / Path(entry["fixed"]).name
        value = str(path) if name.endswith("absolute") else f"../elsewhere/imagesTr/{path.name}"
        _edit_description(copy, lambda d: d["registration_test"][0].__setitem__("fixed", value))
        return "infer", _infer_argv(copy, runs, out), "leaves the dataset folder"
    if name == "parameters.csv row with too few fields":
        lines = runs["parameters"].read_text().splitlines()
        lines[3] = ",".join(lines[3].split(",")[:6])
        short = tmp / "short.csv"
        short.write_text("\n".join(lines) + "\n")
        return "infer", _infer_argv(data, runs, out, parameters=short), "line 4: expected 7 fields"
    if name == "--resume from a model.save file":
        _copy(runs["training"], out)
        HyperVxmDense.load(out / "checkpoints" / "last.pt").save(out / "checkpoints" / "last.pt")
        return "train", _train_argv(data, out, "--resume", "--steps", "4"), "model.save"
    if name == "checkpoint config of an absurd size":
        state = torch.load(runs["global"] / "checkpoints" / "last.pt", weights_only=False)
        state["model_config"]["enc_features"] = [4, 10 ** 7]
        torch.save(state, tmp / "absurd.pt")
        return "identify", _identify_argv(data, tmp / "absurd.pt", out), "model_config 'enc_features' must be"
    if name == "--ncc-window 4":
        return "train", _train_argv(data, out, "--ncc-window", "4"), "--ncc-window must be odd"
    if name == "--val-max-pairs 0":
        return "train", _train_argv(data, out, "--val-split", "val", "--val-max-pairs", "0"), "--val-max-pairs"
    if name == "--val-split typo":
        return "train", _train_argv(data, out, "--val-split", "vall"), "--val-split"
    if name == "pairs listed twice (inference)":
        copy = _copy_data(data, tmp)
        _edit_description(copy, lambda d: d["registration_test"].append(d["registration_test"][0]))
        return "infer", _infer_argv(copy, runs, out), "listed more than once"
    if name.startswith("pair_id "):
        pair_id = {"pair_id leading out of --out": "../../other_run/parameters",
                   "pair_id absolute": str(tmp / "elsewhere")}[name]
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, pair_id=pair_id), runs["global"], out), \
            f"pairs.csv, line 2: pair id {pair_id!r}"
    return _hostile_case(name, runs, data, tmp, out)


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 1.0, 1.0]) if affine is None else affine), str(path))
    return path


def _mhd(tmp, data_file, size=(40000, 40000)):
    header = tmp / "image.mhd"
    header.write_text(f"ObjectType = Image\nNDims = 2\nDimSize = {size[0]} {size[1]}\nElementType = MET_FLOAT\n"
                      f"ElementDataFile = {data_file}\n")
    return header


def _doctored_checkpoint(runs, tmp, edit):
    """The global model's checkpoint with ``edit(payload)`` applied, as ``tmp/doctored.pt``."""
    state = torch.load(runs["global"] / "checkpoints" / "last.pt", weights_only=False)
    edit(state)
    torch.save(state, tmp / "doctored.pt")
    return tmp / "doctored.pt"


def _hostile_case(name, runs, data, tmp, out):
    """Cases of a careless or hostile user: files that would run code, write outside --out, exhaust memory, or
    replace finished results."""
    if name == "identification rerun into a finished run with other options":
        return "identify", _identify_argv(data, runs["global"], _copy(runs["identification"], out), "--grid-step",
                                          "0.25"), "already holds a run of the identification stage"
    if name == "inference rerun into a finished run":
        return "infer", _infer_argv(data, runs, _copy(runs["inference"], out)), \
            "already holds a run of the inference stage"
    if name == "locality rerun into a finished run with other options":
        argv = ["--data-root", str(data), "--split", "test", "--spatial-model", str(runs["spatial"]), "--device", "cpu",
                "--out", str(out)]
        assert MAINS["locality"](argv) == 0
        return "locality", [*argv, "--base-params", "0.2", "0.2"], "already holds a run of the locality stage"
    if name == "--resume with --overwrite":
        return "train", _train_argv(data, _copy(runs["training"], out), "--resume", "--overwrite"), \
            "give one of them"
    if name == "resume training with a shorter --steps":
        return "train", _train_argv(data, _copy(runs["training"], out), "--resume", "--steps", "1"), \
            "is at step 2 already"
    if name.startswith("truncated .nii.gz in a pairs CSV"):
        copy = _copy_data(data, tmp)
        path = copy / "imagesTr" / "PHANTOM_0001_0001.nii.gz"
        path.write_bytes(path.read_bytes()[:path.stat().st_size * 3 // 4])
        pairs = _pairs_csv(copy, tmp)
        scan = ["--no-data-scan"] if "no-data-scan" in name else []
        if "training" in name:
            argv = _pairs_argv(pairs) + _train_argv("unused", out, *scan)[4:]
            argv[argv.index("--batch-size") + 1] = "1"
            return "train", argv, path.name
        return "identify", _identify_pairs_argv(pairs, runs["global"], out, *scan), path.name
    if name == "header bomb .nii (32767 x 32767 in 4 KB)":
        header = nib.Nifti1Header()
        header.set_data_shape((32767, 32767))
        header.set_data_dtype(np.float32)
        bomb = tmp / "bomb.nii"
        bomb.write_bytes(header.binaryblock + b"\0" * 4096)
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, fixed=bomb), runs["global"], out), \
            f"{bomb}: the header declares 32767 x 32767"
    if name == ".nii declaring more bytes than it holds":
        header = nib.Nifti1Header()
        header.set_data_shape((32, 32))
        header.set_data_dtype(np.float32)
        short = tmp / "short.nii"
        short.write_bytes(header.binaryblock + b"\0" * 100)
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, fixed=short), runs["global"], out), \
            f"{short}: the header declares 4,096 bytes"
    if name == ".mhd reading a device":
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, fixed=_mhd(tmp, "/dev/zero")), runs["global"],
                                                out), "data file '/dev/zero' must be one file given relative"
    if name == ".mhd data file outside its folder":
        (tmp / "outside.raw").write_bytes(b"\0" * 16)
        folder = tmp / "images"
        folder.mkdir()
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, fixed=_mhd(folder, "../outside.raw", (2, 2))),
                                                runs["global"], out), "leads out of the header's folder"
    if name == ".mhd data file a link to a device":
        folder = tmp / "images"
        folder.mkdir()
        (folder / "zero.raw").symlink_to("/dev/zero")
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, fixed=_mhd(folder, "zero.raw")),
                                                runs["global"], out), "zero.raw' leads out of the header's folder"
    if name == "complex-valued image":
        path = _nifti(tmp / "complex.nii.gz", np.ones((32, 32, 1), np.complex64))
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, fixed=path), runs["global"], out), \
            f"{path}: complex-valued voxels"
    if name == "1-voxel image":
        path = _nifti(tmp / "dot.nii.gz", np.ones((1, 1, 1), np.float32))
        return "identify", _identify_pairs_argv(_pairs_csv(data, tmp, fixed=path), runs["global"], out), \
            f"{path}: an image of 1x1x1 voxels"
    if name == "zero sform column":
        copy = _copy_data(data, tmp)
        path = _first(copy, "imagesTr", "*_0000.nii.gz")
        image = nib.load(str(path))
        content = bytearray(nib.Nifti1Image(np.asarray(image.dataobj), image.affine).to_bytes())
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(content)))
        affine = image.affine.copy()
        affine[:, 1] = 0  # the sform only: nibabel writes no such qform
        header.set_sform(affine, code=1)
        header.set_qform(image.affine, code=0)
        content[:348] = header.binaryblock
        path.write_bytes(gzip.compress(bytes(content)))
        return "train", _train_argv(copy, out), f"{path.name}: the header's voxel -> world affine (sform/qform) " \
                                                f"has a zero column for axis 1"
    if name == "symlink in the data root leading out of it":
        copy = _copy_data(data, tmp)
        path = _first(copy, "imagesTr", "*_0000.nii.gz")
        outside = tmp / "elsewhere.nii.gz"
        shutil.move(path, outside)
        path.symlink_to(outside)
        return "train", _train_argv(copy, out), "is a link that leaves the dataset folder"
    if name.startswith("NaN weights"):
        def poison(state):
            state["model_state"]["flow.bias"][0] = float("nan")
        model = _doctored_checkpoint(runs, tmp, poison)
        if "inference" in name:
            return "infer", _infer_argv(data, {**runs, "global": model}, out), f"{model}: weight 'flow.bias' holds 1 NaN"
        return "identify", _identify_argv(data, model, out), f"{model}: weight 'flow.bias' holds 1 NaN"
    if name == "checkpoint int_steps 1e9":
        model = _doctored_checkpoint(runs, tmp, lambda state: state["model_config"].__setitem__("int_steps", 1e9))
        return "identify", _identify_argv(data, model, out), "model_config 'int_steps' must be a whole number in 0..64"
    if name == "diffusion model as --global-model (inference)":
        diffusion = tmp / "diffusion"
        assert MAINS["train"](_train_argv(data, diffusion, "--regularizer", "diffusion")) == 0
        return "infer", _infer_argv(data, {**runs, "global": diffusion}, out), "a diffusion model"
    if name.startswith("non-UTF-8"):
        what = name[len("non-UTF-8 "):]
        if what == "config":
            config = tmp / "options.yaml"
            config.write_bytes(b"seed: 2\n# \xff\n")
            return "train", _train_argv(data, out, "--config", str(config)), f"--config {config}: not UTF-8"
        copy = _copy_data(data, tmp)
        path = copy / "PHANTOM_dataset.json" if what == "dataset JSON" else \
            _first(copy, "keypointsTr", "*_0006_0000.csv")
        path.write_bytes(path.read_bytes() + b"\xff\xfe")
        return "infer", _infer_argv(copy, runs, out), path.name
    if name == "config seed: 1e23":
        return "train", _train_argv(data, out, "--config", str(_config(tmp, "seed: 1e23\n"))), "'seed'"
    if name == "config options: 5":
        return "train", _train_argv(data, out, "--config", str(_config(tmp, "options: 5\n"))), "'options' must be"
    if name == "--seed 1e23":
        return "train", _train_argv(data, out, "--seed", str(10 ** 23)), "--seed"
    if name == "--lr inf":
        return "train", _train_argv(data, out, "--lr", "inf"), "--lr must be a positive finite number"
    if name == "--max-voxels below the data":
        return "train", _train_argv(data, out, "--max-voxels", "100"), "more than the limit of 100"
    if name == "lock file a symlink":
        target = tmp / "precious.txt"
        target.write_text("keep me")
        out.mkdir()
        (out / LOCK_NAME).symlink_to(target)
        return "train", _train_argv(data, out), "is a symbolic link, not a lock file"
    raise AssertionError(name)


def _without_steps(argv):
    index = argv.index("--steps")
    return argv[:index] + argv[index + 2:]


def _stage_argv(stage, data, runs, out):
    if stage == "train":
        return _train_argv(data, out)
    if stage == "identify":
        return _identify_argv(data, runs["global"], out)
    return _infer_argv(data, runs, out)


CASES = ["resume training with another --data-root", "resume training with another --seed",
         "resume training with another --lr", "resume training with another --lr-schedule",
         "resume a cosine schedule with other --steps", "resume identification after its model file was replaced",
         "resume inference with another --parameters", "resume a folder without run.json",
         "config steps: 2.7", "config steps: true", "config amp: 'no'", "config criterion: bogus",
         "identification into a training folder", "inference into an identification folder",
         "training into a folder of other files", "truncated image", "NaN voxels", "NaN in a true displacement",
         *[f"--out is a file: {stage}" for stage in ("train", "identify", "infer")],
         *[f"--out cannot be written: {stage}" for stage in ("train", "identify", "infer")],
         "pair entry number", "pair entry null", "pair entry a number as file", "pair path absolute",
         "pair path with ..", "parameters.csv row with too few fields", "--resume from a model.save file",
         "checkpoint config of an absurd size", "--ncc-window 4", "--val-max-pairs 0", "--val-split typo",
         "pairs listed twice (inference)", "pair_id leading out of --out", "pair_id absolute",
         "identification rerun into a finished run with other options", "inference rerun into a finished run",
         "locality rerun into a finished run with other options", "--resume with --overwrite",
         "resume training with a shorter --steps",
         "truncated .nii.gz in a pairs CSV (identification)", "truncated .nii.gz in a pairs CSV (training)",
         "truncated .nii.gz in a pairs CSV (identification, --no-data-scan)",
         "truncated .nii.gz in a pairs CSV (training, --no-data-scan)", "header bomb .nii (32767 x 32767 in 4 KB)",
         ".nii declaring more bytes than it holds", ".mhd reading a device", ".mhd data file outside its folder",
         ".mhd data file a link to a device", "complex-valued image", "1-voxel image", "zero sform column",
         "symlink in the data root leading out of it", "NaN weights (identification)", "NaN weights (inference)",
         "checkpoint int_steps 1e9", "diffusion model as --global-model (inference)", "non-UTF-8 config",
         "non-UTF-8 dataset JSON", "non-UTF-8 keypoint file", "config seed: 1e23", "config options: 5",
         "--seed 1e23", "--lr inf", "--max-voxels below the data", "lock file a symlink"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(*roots):
    """Every file and folder under ``roots`` with the sha256 of each file's content."""
    found = {}
    for root in map(Path, roots):
        paths = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
        for path in paths:
            found[str(path)] = _digest(path) if path.is_file() else ("folder" if path.is_dir() else None)
    return found


def _one_error_line(text):
    lines = [line for line in text.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_one_line_naming_it_and_writes_and_damages_nothing(name, runs, phantom_root, tmp_path,
                                                                                  capsys):
    stage, argv, needle = _case(name, runs, phantom_root, tmp_path)
    watched = (tmp_path, phantom_root, *(runs[key] for key in ("training", "identification", "inference")))
    before = _snapshot(*watched)
    try:
        with pytest.raises(SystemExit) as exit_info:
            MAINS[stage](argv)
    finally:
        (tmp_path / "locked").chmod(0o700) if (tmp_path / "locked").exists() else None
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert needle in line, line
    assert _snapshot(*watched) == before


def test_a_run_into_a_folder_in_use_exits_2_naming_the_holder_and_changes_nothing(phantom_root, runs, tmp_path,
                                                                                   capsys):
    out = _copy(runs["training"], tmp_path / "run")
    with OutputLock(out):
        before = _snapshot(tmp_path)
        with pytest.raises(SystemExit) as exit_info:
            MAINS["train"](_train_argv(phantom_root, out, "--resume", "--steps", "4"))
        assert exit_info.value.code == 2
        assert f"is in use by another run (process {os.getpid()})" in _one_error_line(capsys.readouterr().err)
        assert _snapshot(tmp_path) == before


def test_resume_may_change_where_and_how_fast_a_run_goes(phantom_root, runs, tmp_path):
    out = _copy(runs["training"], tmp_path / "run")
    assert MAINS["train"](_train_argv(phantom_root, out, "--resume", "--steps", "3", "--checkpoint-every", "7",
                                      "--log-every", "3", "--no-data-scan")) == 0
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 3
    assert json.loads((out / "run.json").read_text())["options"]["steps"] == 3
    infer = _copy(runs["inference"], tmp_path / "inference")
    (infer / "global" / ".disp_0006_0006.nii.gz.k3j.tmp").write_bytes(b"left by a killed run")
    assert MAINS["infer"](_infer_argv(phantom_root, runs, infer, "--resume", "--figures", "1")) == 0
    assert not list(infer.rglob("*.tmp")) and not (infer / LOCK_NAME).exists()


def test_a_file_that_fails_mid_run_without_the_scan_stops_training_naming_it_and_keeps_the_checkpoint(
        phantom_root, tmp_path, capsys):
    data, out = _copy_data(phantom_root, tmp_path), tmp_path / "run"
    assert MAINS["train"](_train_argv(data, out)) == 0
    # Every moving image of the training split but the first pair's (read when the run is prepared): the next batch
    # of two pairs reads at least one of them.
    for case in ("0002", "0003", "0004"):
        path = data / "imagesTr" / f"PHANTOM_{case}_0001.nii.gz"
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(SystemExit) as exit_info:
        MAINS["train"](_train_argv(data, out, "--resume", "--steps", "6", "--no-data-scan"))
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "_0001.nii.gz" in line and "cannot read the voxel data" in line and "last good checkpoint" in line
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"] == 2


def test_an_error_a_dataloader_worker_reraised_is_reported_by_its_original_line():
    wrapped = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1, in <module>\nValueError: image file a.nii.gz: 2 voxel "
                         "value(s) are NaN or infinite\n")
    assert error_message(wrapped) == "image file a.nii.gz: 2 voxel value(s) are NaN or infinite"
    assert error_message(PermissionError(13, "Permission denied", "/out/x")) == "/out/x: Permission denied"


# -- two runs into one folder -----------------------------------------------------------------------------------


def _race(folder, barrier, results, hold_s):
    barrier.wait()
    try:
        lock = OutputLock(folder).acquire()
    except ValueError as error:
        results.put(("refused", str(error)))
        return
    marker = Path(folder) / "writer"
    marker.write_text(str(os.getpid()))
    os.sched_yield()
    intact = marker.read_text() == str(os.getpid())
    results.put(("ran", intact))
    import time

    time.sleep(hold_s)
    lock.release()


def test_of_two_processes_taking_one_folder_exactly_one_proceeds_twenty_times_in_a_row(tmp_path):
    context = multiprocessing.get_context("fork")
    for round_ in range(20):
        folder = tmp_path / f"round{round_}" / "run"  # missing: both also race to create it
        barrier, results = context.Barrier(2), context.Queue()
        processes = [context.Process(target=_race, args=(folder, barrier, results, 0.05)) for _ in range(2)]
        for process in processes:
            process.start()
        outcomes = sorted(results.get(timeout=30) for _ in processes)
        for process in processes:
            process.join(30)
        assert [kind for kind, _ in outcomes] == ["ran", "refused"], outcomes
        assert outcomes[0][1] is True and "is in use by another run" in outcomes[1][1]
        assert not (folder / LOCK_NAME).exists()


def _script_env():
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def test_two_trainings_into_one_folder_one_refuses_and_the_other_is_intact(phantom_root, tmp_path):
    for round_ in range(3):
        out = tmp_path / f"race{round_}"
        commands = [[sys.executable, str(REPO / "train_hypermorph_global.py"),
                     *_train_argv(phantom_root, out, "--steps", "6", "--checkpoint-every", "1", "--log-every", "1",
                                  "--seed", str(seed))] for seed in (1, 2)]
        processes = [subprocess.Popen(command, env=_script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True) for command in commands]
        finished = [(process.wait(timeout=300), process.stderr.read()) for process in processes]
        codes = [code for code, _ in finished]
        assert sorted(codes) == [0, 2], finished
        loser = _one_error_line(finished[codes.index(2)][1])
        # Refused by the lock, or, when it came late on a loaded machine, by the finished run it found.
        assert "is in use by another run" in loser or "already holds a run" in loser, loser
        seed = (1, 2)[codes.index(0)]
        options = json.loads((out / "config.json").read_text())["options"]
        checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
        record = json.loads((out / "run.json").read_text())
        assert options["seed"] == checkpoint["config"]["options"]["seed"] == record["options"]["seed"] == seed
        with (out / "train_log.csv").open() as handle:
            assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4, 5, 6]
        assert checkpoint["step"] == 6 and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("pair_id", ["..", ".", "a/b", "a\\b", "a\0b", "/abs"])
def test_a_pair_id_that_is_not_one_plain_file_name_is_refused_naming_the_csv_line(pair_id, phantom_root, tmp_path):
    from hypermorph_spatially_adaptive.data.pair_list import PairListDataset

    with pytest.raises(ValueError, match="pairs.csv, line 2: pair id .* file name"):
        PairListDataset(_pairs_csv(phantom_root, tmp_path, pair_id=pair_id), "val",
                        class_names=json.loads(PHANTOM_CLASSES))


# -- checkpoints cannot run code ---------------------------------------------------------------------------------


class _Payload:
    """Unpickled, it would create the file ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _crafted_checkpoint(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "hypermorph-v2", "model_config": _Payload(marker), "model_state": {}, "step": 0}, path)
    return path


def test_no_module_of_the_package_unpickles_arbitrary_objects():
    package = REPO / "hypermorph_spatially_adaptive"
    offenders = [str(path.relative_to(REPO)) for path in package.rglob("*.py")
                 if "weights_only=False" in path.read_text()]
    assert not offenders


def _pickle_case(where, runs, data, tmp):
    """(main, argv, the crafted file) for a crafted checkpoint read by ``where``."""
    marker, evil = tmp / "marker", tmp / "evil" / "last.pt"
    out = tmp / "run"
    if where == "training --resume":
        _copy(runs["training"], out)
        return MAINS["train"], _train_argv(data, out, "--resume", "--steps", "4"), \
            _crafted_checkpoint(out / "checkpoints" / "last.pt", marker)
    _crafted_checkpoint(evil, marker)
    if where == "training --init-from":
        return lambda argv: training.main("spatial", argv), _train_argv(data, out, "--init-from", str(evil)), evil
    if where == "identification --global-model":
        return MAINS["identify"], _identify_argv(data, evil, out), evil
    if where in ("inference --spatial-model", "inference --global-model"):
        kind = where.split("--")[1].split("-")[0]
        return MAINS["infer"], _infer_argv(data, {**runs, kind: evil}, out), evil
    if where == "locality --spatial-model":
        return locality.main, ["--data-root", str(data), "--spatial-model", str(evil), "--device", "cpu",
                               "--out", str(out)], evil
    raise AssertionError(where)


@pytest.mark.parametrize("where", ["training --resume", "training --init-from", "identification --global-model",
                                   "inference --spatial-model", "inference --global-model",
                                   "locality --spatial-model"])
def test_a_crafted_pickle_where_a_stage_reads_a_checkpoint_runs_no_code_and_exits_2_naming_it(where, runs,
                                                                                               phantom_root,
                                                                                               tmp_path, capsys):
    main, argv, evil = _pickle_case(where, runs, phantom_root, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert str(evil) in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "marker").exists()


def test_a_crafted_pickle_in_a_study_rerun_runs_no_code_and_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    from hypermorph_spatially_adaptive.stages import study
    from hypermorph_spatially_adaptive.stages.study import presets

    monkeypatch.setitem(presets.PRESETS, "tiny", dict(
        seeds=(1,), regimes=(presets.Regime("rich", 2, 32),), subjects=6, val=1, test=1, global_steps=4,
        paper_steps=2, batch_size=2, lr=1e-3, enc_features=[4, 8], dec_features=[8, 8, 4], hyper_layers=2,
        hyper_units=16, grid_step=0.5, jobs=1, io_steps=2, io_grid_step=0.5, io_val_pairs=1,
        io_ncc_window=9, elastix=False))
    out = tmp_path / "runs"
    evil = _crafted_checkpoint(out / "tiny" / "rich-2d-32" / "seed1" / "global" / "checkpoints" / "last.pt", tmp_path / "marker")
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--preset", "tiny", "--out", str(out), "--report", str(tmp_path / "STUDY.md"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert str(evil) in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "marker").exists()


# -- a full disk, --overwrite, header bombs ----------------------------------------------------------------------


def _full_disk(monkeypatch, names):
    """Writes of temporary files (of the atomic writer) whose target's name is in ``names`` (None: any) fail with
    ENOSPC."""
    import errno
    import pathlib

    for method in ("write_bytes", "write_text"):
        original = getattr(pathlib.Path, method)

        def failing(self, *args, _original=original, **kwargs):
            target = self.name[1:].rsplit(".", 2)[0] if self.name.endswith(".tmp") else None
            if target is not None and (names is None or target in names):
                raise OSError(errno.ENOSPC, "No space left on device")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, method, failing)


@pytest.mark.parametrize("stage", ["train", "identify", "infer"])
def test_a_full_disk_exits_2_naming_the_file_being_written_and_the_last_good_checkpoint(stage, runs, phantom_root,
                                                                                        tmp_path, monkeypatch,
                                                                                        capsys):
    out = tmp_path / "run"
    if stage == "train":
        argv = _train_argv(phantom_root, _copy(runs["training"], out), "--resume", "--steps", "4")
        written = out / "checkpoints" / "last.pt"
    else:
        argv = _stage_argv(stage, phantom_root, runs, out)
        written = out / "run.json"
    _full_disk(monkeypatch, {"last.pt"} if stage == "train" else None)
    with pytest.raises(SystemExit) as exit_info:
        MAINS[stage](argv)
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{written}: cannot write this file (No space left on device)" in line, line
    if stage == "train":
        assert f"the last good checkpoint is {written}" in line, line
        assert read_checkpoint(written)["step"] == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_overwrite_replaces_a_finished_run_and_resume_continues_it(phantom_root, runs, tmp_path):
    out = _copy(runs["identification"], tmp_path / "run")
    (out / "notes.txt").write_text("of the earlier run")
    assert MAINS["identify"](_identify_argv(phantom_root, runs["global"], out, "--grid-step", "0.25",
                                            "--overwrite")) == 0
    assert not (out / "notes.txt").exists()
    assert json.loads((out / "run.json").read_text())["options"]["grid_step"] == 0.25
    assert MAINS["identify"](_identify_argv(phantom_root, runs["global"], out, "--grid-step", "0.25",
                                            "--resume")) == 0


_BOMB_READER = """
import resource, sys
from pathlib import Path
import SimpleITK  # noqa: F401 - loaded before the baseline, as every stage has it
from hypermorph_spatially_adaptive.data import image_io, volume_io
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
readers = [image_io.read_image, image_io.read_header] + ([volume_io.load_image] if ".nii" in sys.argv[1] else [])
for read in readers:
    try:
        read(Path(sys.argv[1]))
    except ValueError as error:
        print(error)
    else:
        raise SystemExit("read without an error")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("bomb", ["nii", "nii.gz", "mhd"])
def test_opening_a_header_bomb_fails_naming_it_without_allocating(bomb, tmp_path):
    path = tmp_path / f"bomb.{bomb}"
    if bomb == "mhd":
        (tmp_path / "bomb.raw").write_bytes(b"\0" * 120)
        _mhd(tmp_path, "bomb.raw", (16000, 16000)).rename(path)
    else:
        header = nib.Nifti1Header()
        header.set_data_shape((16000, 16000))  # 256 million voxels: under the voxel limit, 1 GB of float32
        header.set_data_dtype(np.float32)
        content = header.binaryblock + b"\0" * 4096
        path.write_bytes(gzip.compress(content) if bomb == "nii.gz" else content)
    result = subprocess.run([sys.executable, "-c", _BOMB_READER, str(path)], env=_script_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *messages, grown = result.stdout.strip().splitlines()
    assert len(messages) == (2 if bomb == "mhd" else 3) and all(str(path) in message and "the header declares" in message
                                      for message in messages), messages
    assert int(grown) < 200 * 2 ** 20, f"peak memory grew by {int(grown) / 2 ** 20:.0f} MB"
