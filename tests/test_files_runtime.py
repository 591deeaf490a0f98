"""The ground floor: atomic writes (files.py); devices, seeding and RNG state round trips (runtime.py)."""
import csv
import os
import random

import numpy as np
import pytest
import torch

from hypermorph_spatially_adaptive.files import atomic_write, atomic_write_csv, atomic_write_json
from hypermorph_spatially_adaptive.runtime import resolve_device, rng_state, seed_everything, set_rng_state


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def broken(tmp):
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_written_files_get_the_usual_permissions_not_private_ones(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = atomic_write_json({"a": 1}, tmp_path / "config.json")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_csv_round_trip_keeps_full_float_precision(tmp_path):
    value = 0.1 + 0.2
    path = atomic_write_csv(tmp_path / "nested" / "t.csv", ["name", "value"], [["a", value], ["b", ""]])
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["value"]) == value and rows[1]["value"] == ""


def test_rng_state_round_trip_replays_every_generator():
    seed_everything(5)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_device_names_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
