"""Shared fixtures: a tiny 2D phantom dataset and tiny model settings, made once per test session."""
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Small widths keep every end-to-end run to a few seconds on 2 CPU cores.
TINY_MODEL_FLAGS = ["--enc-features", "4", "8", "--dec-features", "8", "8", "4", "--hyper-layers", "2",
                    "--hyper-units", "16", "--ncc-window", "5", "--int-steps", "4", "--workers", "0",
                    "--device", "cpu"]


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """A 2D phantom dataset (32x32, 6 subjects: 4 train, 1 val, 1 test) in the NLST-like layout."""
    from hypermorph_spatially_adaptive.data import phantom

    root = tmp_path_factory.mktemp("phantom") / "data"
    phantom.write_dataset(root, ndim=2, subjects=6, shape=(32, 32), seed=0, val=1, test=1)
    return root


@pytest.fixture()
def tiny_flags():
    return list(TINY_MODEL_FLAGS)


def _train_tiny(model_type: str, root, out, steps: int = 30):
    from hypermorph_spatially_adaptive.stages.training import main

    argv = ["--dataset", "phantom", "--data-root", str(root), "--out", str(out), *TINY_MODEL_FLAGS,
            "--steps", str(steps), "--batch-size", "2", "--lr", "3e-3", "--val-every", str(steps), "--seed", "0"]
    assert main(model_type, argv) == 0
    return out


@pytest.fixture(scope="session")
def trained_global(phantom_root, tmp_path_factory):
    """Run folder of a tiny global elastic model trained for 30 steps on ``phantom_root`` (checkpoints/last.pt)."""
    return _train_tiny("global", phantom_root, tmp_path_factory.mktemp("trained") / "global")


@pytest.fixture(scope="session")
def trained_spatial(phantom_root, tmp_path_factory):
    """Run folder of a tiny spatially adaptive elastic model (5 phantom classes) trained for 30 steps."""
    return _train_tiny("spatial", phantom_root, tmp_path_factory.mktemp("trained") / "spatial")
