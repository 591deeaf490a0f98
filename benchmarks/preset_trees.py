"""Synthetic data in the layout of each preset's dataset (Learn2Reg NLST / Lung CT, ACDC), at any size.

``write_tree(preset, root, scale)`` writes a few cases that a preset (``configs/*.yaml``) opens as it would open the
real release: the Learn2Reg JSON, images, lung masks and keypoints, or the ACDC patient folders with ``Info.cfg``,
frames and label maps. The content is a smooth blob scene (it compresses and it registers), not anatomy: the point
is the layout, the sizes and the cost of a training step. Used by ``bench_presets.py`` (real sizes) and the preset
tests (tiny sizes). Import after putting the repository root on ``sys.path``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import yaml

__all__ = ["PRESET_DIR", "preset_files", "load_preset", "file_geometry", "write_learn2reg", "write_acdc",
           "write_tree"]

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"
_PREFIX = {"nlst": "NLST", "lungct": "LungCT"}


def preset_files() -> list[Path]:
    """Every preset file, sorted."""
    return sorted(PRESET_DIR.glob("*.yaml"))


def load_preset(path: Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(array, affine).to_filename(str(path))


def _blobs(shape: Sequence[int], shift: float = 0.0) -> np.ndarray:
    """A smooth scene in [0, 1]: an ellipsoid body with two darker lobes, shifted by ``shift`` of the extent."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    x, rest = grids[0] - shift, grids[1:]
    body = x ** 2 / 0.8 + sum(g ** 2 / 0.8 for g in rest) < 1
    lobes = ((np.abs(x) - 0.4) ** 2 / 0.08 + sum(g ** 2 / 0.3 for g in rest) < 1) & body
    return body.astype(np.float32) * 0.6 - lobes.astype(np.float32) * 0.45


def file_geometry(preset: dict[str, Any], scale: float = 1.0) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and spacing (3 values each) of the files a preset expects: its image size (``scale`` times it per axis)
    and spacing (the in-plane ones for a 2D preset of 3D data)."""
    dataset, ndim = preset["dataset"], int(preset.get("ndim") or 3)
    options = dict(item.split("=", 1) for item in preset.get("dataset_option", []))
    size = preset.get("image_size") or json.loads(options.get("shape", "[128, 128]"))
    spacing = preset.get("target_spacing") or json.loads(options.get("spacing", "[1.5, 1.5]"))
    size = [max(8, int(round(n * scale))) for n in size]
    spacing = [float(s) for s in spacing]
    if dataset == "acdc":  # short-axis slices along the third axis, 10 mm apart
        return (size[0], size[1], 10), (spacing[0], spacing[1], 10.0)
    if ndim == 2:  # a coronal preset of 3D CT: in-plane (right-left, superior-inferior), a few coronal slices
        return (size[0], 8, size[1]), (spacing[0], spacing[0], spacing[1])
    return tuple(size), tuple(spacing)


def write_learn2reg(root: Path, dataset: str, shape: Sequence[int], spacing: Sequence[float],
                    train: int = 2, val: int = 1, points: int = 20) -> Path:
    """A Learn2Reg tree (``nlst`` or ``lungct``): ``train + val`` cases, uncompressed NIfTI, RAS+ identity orientation."""
    prefix = _PREFIX[dataset]
    affine = np.diag([*spacing, 1.0])
    rng = np.random.default_rng(0)
    cases = [f"{n:04d}" for n in range(1, train + val + 1)]
    (root / "keypointsTr").mkdir(parents=True, exist_ok=True)
    for number, case in enumerate(cases):
        for index, shift in ((0, 0.0), (1, 0.04 + 0.01 * number)):
            name = f"{prefix}_{case}_000{index}"
            scene = _blobs(shape, shift)
            _save(root / "imagesTr" / f"{name}.nii", (scene * 1400 - 1000).astype(np.float32), affine)
            _save(root / "masksTr" / f"{name}.nii", (scene < 0.3).astype(np.uint8) * (scene > 0.05), affine)
        grid = np.asarray(shape, dtype=np.float64) - 1
        fixed = rng.uniform(0.3, 0.7, (points, 3)) * grid
        np.savetxt(root / "keypointsTr" / f"{prefix}_{case}_0000.csv", fixed, delimiter=",", fmt="%.3f")
        np.savetxt(root / "keypointsTr" / f"{prefix}_{case}_0001.csv", fixed + [1.0, 0.0, 0.0], delimiter=",",
                   fmt="%.3f")
    entry = [{"fixed": f"./imagesTr/{prefix}_{c}_0000.nii", "moving": f"./imagesTr/{prefix}_{c}_0001.nii"}
             for c in cases]
    description = {"name": prefix, "tensorImageSize": {"0": "3D"}, "training_paired_images": entry,
                   "registration_val": entry[train:], "registration_test": []}
    (root / f"{prefix}_dataset.json").write_text(json.dumps(description, indent=1))
    return root


def write_acdc(root: Path, shape: Sequence[int], spacing: Sequence[float], train: int = 2, val: int = 1) -> Path:
    """An ACDC tree: patients 1..``train`` and 81..80+``val`` in ``database/training/``, end-diastole frame 1 and
    end-systole frame 5, every class on the middle slices of both frames."""
    affine = np.diag([*spacing, 1.0])
    for number in [*range(1, train + 1), *range(81, 81 + val)]:
        folder = root / "database" / "training" / f"patient{number:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 5\nGroup: NOR\nHeight: 175\nNbFrame: 20\nWeight: 70\n")
        for frame, shift in ((1, 0.0), (5, 0.05)):
            scene = _blobs(shape, shift)
            labels = np.zeros(shape, np.uint8)
            labels[scene > 0.05] = 1  # rv
            labels[scene > 0.4] = 2  # myocardium
            centre = tuple(n // 2 for n in shape[:2])
            labels[centre[0] - 2:centre[0] + 2, centre[1] - 2:centre[1] + 2, 1:-1] = 3  # lv
            stem = folder / f"patient{number:03d}_frame{frame:02d}"
            _save(Path(f"{stem}.nii.gz"), (scene * 800).astype(np.float32), affine)
            _save(Path(f"{stem}_gt.nii.gz"), labels, affine)
    return root


def write_tree(preset: dict[str, Any], root: Path, scale: float = 1.0, train: int = 2) -> Path:
    """The synthetic tree a preset opens (see the module docstring) in ``root``: ``train`` training cases (at least a
    batch) and one validation case; ``scale`` shrinks every axis."""
    shape, spacing = file_geometry(preset, scale)
    if preset["dataset"] == "acdc":
        return write_acdc(Path(root), shape, spacing, train=train)
    return write_learn2reg(Path(root), preset["dataset"], shape, spacing, train=train)
