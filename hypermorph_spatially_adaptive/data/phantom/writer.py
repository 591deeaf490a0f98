"""The phantom dataset writer and its command line (``phantom.py``, ``hypermorph-phantom``).

:func:`write_dataset` writes ``subjects`` pairs in the Learn2Reg NLST layout with prefix ``PHANTOM`` (read back by
:class:`~..phantom_dataset.PhantomDataset`): images, masks, labels, keypoints and the true displacement of each
pair, ``PHANTOM_dataset.json`` and ``phantom_config.json``, written into a temporary folder and renamed into place.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy
import torch

from .anatomy import CLASS_NAMES, HU, HU_CT, TEXTURES, TISSUES
from .elasticity import SOLVERS, lame_from_young
from .subject import check_grid, default_max_displacement, generate_subject

__all__ = ["GENERATOR_VERSION", "split_sizes", "write_dataset", "main"]

GENERATOR_VERSION = "2.0"


def split_sizes(subjects: int, val: int | None = None, test: int | None = None) -> tuple[int, int, int]:
    """``(train, val, test)`` subject counts: by default the last 20% (at least 1 each when there are >= 3
    subjects) split equally into validation and test (test takes the odd one); ``val``/``test`` override."""
    if not isinstance(subjects, (int, np.integer)) or subjects < 1:
        raise ValueError(f"subjects must be a positive integer, got {subjects!r}")
    held_out = int(round(0.2 * subjects))
    default_val = held_out // 2
    default_test = held_out - default_val
    if subjects >= 3:
        default_val, default_test = max(default_val, 1), max(default_test, 1)
    val = default_val if val is None else val
    test = default_test if test is None else test
    for name, value in (("val", val), ("test", test)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if val + test > subjects - 1:
        raise ValueError(f"val + test must leave at least one training subject: val={val} + test={test} with "
                         f"subjects={subjects}")
    return subjects - val - test, int(val), int(test)


def phantom_affine(spacing: Sequence[float]) -> np.ndarray:
    """Voxel -> RAS affine of the phantom's files (see :mod:`.anatomy` for the orientation).

    3D: ``diag(spacing, 1)`` (axes right, anterior, superior). 2D, a coronal slice: axis 0 right, axis 1 superior,
    and the third column (the slice normal, unit length) posterior, so that viewers show it upright.
    """
    affine = np.eye(4)
    if len(spacing) == 3:
        affine[range(3), range(3)] = spacing
    else:
        affine[:3, :3] = [[spacing[0], 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, spacing[1], 0.0]]
    return affine


def _nifti(array: np.ndarray, spacing: tuple[float, ...]):
    """A NIfTI image of ``array`` (``[*S]`` or a field ``[*S, ndim]``); a 2D one is stored as one slice of a 3D
    volume (``[H, W, 1]``, a field ``[H, W, 1, 2]``), so that its 3x3 direction (with the slice normal) is proper
    and ITK readers accept it: a 2D NIfTI file only keeps the in-plane 2x2 block, singular for a coronal plane."""
    import nibabel as nib

    if len(spacing) == 2:
        array = array[:, :, None]
    image = nib.Nifti1Image(array, phantom_affine(spacing))
    image.header.set_xyzt_units("mm")
    return image


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a directory path, but {out} is an existing file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out directory {out} is not empty; pass overwrite=True (--overwrite) to replace it")


def write_dataset(out: str | Path, ndim: int = 2, subjects: int = 10, shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None, seed: int = 0, val: int | None = None,
                  test: int | None = None, max_displacement: float | None = None, noise_std: float = 20.0,
                  keypoints: int | None = None, solver: str = "auto", overwrite: bool = False,
                  progress: bool = True, extra_config: dict | None = None, texture: str = "rich") -> Path:
    """Write a phantom dataset of ``subjects`` pairs to ``out`` in the NLST-like ``PHANTOM`` layout; return ``out``.

    Case ``XXXX`` (``0001``...) is :func:`generate_subject` with seed ``(seed, case number)``, so a case does not
    depend on how many are written. The first cases train, then validation, then test (:func:`split_sizes`).
    Everything is written into a temporary folder beside ``out`` and renamed into place at the end; a non-empty
    ``out`` is refused unless ``overwrite``. ``PHANTOM_dataset.json`` describes the dataset (pair lists,
    nominal materials, per-subject stiffness factors and load); ``phantom_config.json`` holds every option.
    Files: images float32 HU, masks and labels uint8, keypoints CSV, true displacement float32 ``[*S, ndim]``;
    a 2D phantom's volumes are one slice of a 3D NIfTI (``[H, W, 1]``, the field ``[H, W, 1, 2]``).
    ``texture`` is the image regime (``rich`` or ``ct``, :mod:`.anatomy`); for a seed the two regimes write the
    same anatomy, materials, motion and keypoints, and differ only in the images.
    """
    shape, spacing = check_grid(ndim, shape, spacing)
    n_train, n_val, n_test = split_sizes(subjects, val, test)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    max_displacement = default_max_displacement(shape) if max_displacement is None else float(max_displacement)
    if not max_displacement > 0 or not noise_std >= 0:
        raise ValueError(f"max_displacement must be > 0 voxels and noise_std >= 0 HU, got {max_displacement!r} "
                         f"and {noise_std!r}")
    keypoints = (60 if ndim == 2 else 200) if keypoints is None else keypoints
    if not isinstance(keypoints, (int, np.integer)) or keypoints < 1:
        raise ValueError(f"keypoints must be a positive integer, got {keypoints!r}")
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    config = {
        "generator_version": GENERATOR_VERSION, "ndim": ndim, "subjects": int(subjects), "shape": list(shape),
        "spacing": list(spacing), "seed": int(seed), "val": n_val, "test": n_test,
        "max_displacement": max_displacement, "noise_std": float(noise_std), "keypoints": int(keypoints),
        "solver": solver, "texture": texture, "stiffness_range": [0.5, 2.0], "tissues": TISSUES,
        "hu": HU if texture == "rich" else HU_CT,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "torch": torch.__version__},
        **(extra_config or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for folder in ("imagesTr", "masksTr", "labelsTr", "keypointsTr", "groundtruthTr"):
            (tmp / folder).mkdir()
        pairs = {"train": [], "val": [], "test": []}
        records, started = {}, time.perf_counter()
        for number in tqdm(range(1, subjects + 1), desc="phantom subjects", unit="subject", disable=not progress):
            case = f"{number:04d}"
            split = "train" if number <= n_train else ("val" if number <= n_train + n_val else "test")
            subject = generate_subject(ndim, shape, spacing, np.random.default_rng([seed, number]),
                                       max_displacement=max_displacement, noise_std=noise_std,
                                       keypoints=keypoints, solver=solver, texture=texture)
            for index, side in (("0000", "fixed"), ("0001", "moving")):
                name = f"PHANTOM_{case}_{index}"
                _nifti(subject[side].astype(np.float32), spacing).to_filename(tmp / "imagesTr" / f"{name}.nii.gz")
                _nifti(subject[f"{side}_mask"].astype(np.uint8), spacing).to_filename(
                    tmp / "masksTr" / f"{name}.nii.gz")
                _nifti(subject[f"{side}_labels"].astype(np.uint8), spacing).to_filename(
                    tmp / "labelsTr" / f"{name}.nii.gz")
                np.savetxt(tmp / "keypointsTr" / f"{name}.csv", subject[f"{side}_keypoints"], fmt="%.6f",
                           delimiter=",")
            field = np.moveaxis(subject["displacement"], 0, -1).astype(np.float32)  # [*S, ndim]
            _nifti(field, spacing).to_filename(tmp / "groundtruthTr" / f"disp_{case}_{case}.nii.gz")
            pairs[split].append({"fixed": f"./imagesTr/PHANTOM_{case}_0000.nii.gz",
                                 "moving": f"./imagesTr/PHANTOM_{case}_0001.nii.gz"})
            records[case] = {
                "split": split,
                "stiffness_factors": subject["stiffness_factors"],
                "load": subject["load"],
                "num_keypoints": int(len(subject["fixed_keypoints"])),
                "min_jacobian_det": subject["min_jacobian_det"],
                "inverse_error_vox": subject["inverse_error"],
                "inverse_error_lung_liver_vox": subject["inverse_error_lung_liver"],
            }
        config["generation_seconds"] = round(time.perf_counter() - started, 3)
        description = {
            "name": "phantom",
            "description": "Synthetic thorax phantom with a heterogeneous linear-elastic true displacement "
                           "(phantom.py); fixed = expiration, moving = inspiration.",
            "ndim": ndim,
            "tensorImageShape": {"0": list(shape)},
            "spacing": list(spacing),
            "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
            "modality": {"0": "CT"},
            "texture": texture,
            "numTraining": n_train,
            "training_paired_images": pairs["train"],
            "registration_val": pairs["val"],
            "registration_test": pairs["test"],
            "materials": {name: dict(zip(("lam", "mu"), lame_from_young(**TISSUES[name])), **TISSUES[name])
                          for name in CLASS_NAMES},
            "subjects": records,
            "seed": int(seed),
            "generator_version": GENERATOR_VERSION,
        }
        (tmp / "PHANTOM_dataset.json").write_text(json.dumps(description, indent=2))
        (tmp / "phantom_config.json").write_text(json.dumps(config, indent=2))
        os.chmod(tmp, 0o755)
        _check_out(out, overwrite)  # it may have been filled while we worked
        if out.is_dir() and any(out.iterdir()):
            # Swap by renames so a reader never sees a half-written dataset, then drop the old one.
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only for real defaults; None/False defaults are explained in the help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=_HelpFormatter,
        description="Write a synthetic thorax phantom dataset (NLST-like layout, prefix PHANTOM) whose true "
                    "displacement solves heterogeneous linear elasticity.")
    parser.add_argument("--out", required=True, help="output dataset folder (written atomically; required)")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="2D coronal slices or 3D volumes")
    parser.add_argument("--subjects", type=int, default=10, help="number of subjects (= image pairs)")
    parser.add_argument("--size", type=int, nargs="+", default=None,
                        help="voxels per axis: one value for all axes or ndim values [default: 96 (2D), 48 (3D)]")
    parser.add_argument("--spacing", type=float, nargs="+", default=None,
                        help="mm per voxel: one value or ndim values [default: 2.0]")
    parser.add_argument("--seed", type=int, default=0, help="random seed (subject i uses (seed, i))")
    parser.add_argument("--val", type=int, default=None, help="validation subjects [default: half of the last 20%%]")
    parser.add_argument("--test", type=int, default=None, help="test subjects [default: the rest of the last 20%%]")
    parser.add_argument("--max-displacement", type=float, default=None,
                        help="bound on the true displacement in voxels [default: 6%% of the smallest size]")
    parser.add_argument("--noise-std", type=float, default=20.0, help="image noise (HU), independent per image")
    parser.add_argument("--keypoints", type=int, default=None, help="keypoints per subject [default: 60 2D, 200 3D]")
    parser.add_argument("--texture", choices=TEXTURES, default="rich",
                        help="image regime: rich (texture in every tissue, as contrast-enhanced CT) or ct "
                             "(non-contrast CT: homogeneous soft tissue, fat and liver)")
    parser.add_argument("--solver", choices=SOLVERS, default="auto", help="sparse solver of the elasticity system")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: parse, validate everything, then write the dataset. Returns 0 on success."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        try:
            shape, spacing = check_grid(args.ndim, args.size, args.spacing)
        except ValueError as error:
            raise ValueError(f"--size/--spacing: {error}") from None
        try:
            split_sizes(args.subjects, args.val, args.test)
        except ValueError as error:
            raise ValueError(f"--subjects/--val/--test: {error}") from None
        for name, value, ok in (("--max-displacement", args.max_displacement,
                                 args.max_displacement is None or args.max_displacement > 0),
                                ("--noise-std", args.noise_std, args.noise_std >= 0),
                                ("--keypoints", args.keypoints, args.keypoints is None or args.keypoints >= 1),
                                ("--seed", args.seed, args.seed >= 0)):
            if not ok:
                raise ValueError(f"{name} out of range: got {value}")
        _check_out(Path(args.out), args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    out = write_dataset(args.out, ndim=args.ndim, subjects=args.subjects, shape=shape, spacing=spacing,
                        seed=args.seed, val=args.val, test=args.test, max_displacement=args.max_displacement,
                        noise_std=args.noise_std, keypoints=args.keypoints, solver=args.solver, texture=args.texture,
                        overwrite=args.overwrite, progress=not args.quiet,
                        extra_config={"command": [Path(sys.argv[0]).name] + list(argv if argv is not None
                                                                                 else sys.argv[1:])})
    description = json.loads((out / "PHANTOM_dataset.json").read_text())
    errors = [s["inverse_error_lung_liver_vox"] for s in description["subjects"].values()]
    print(f"wrote {args.subjects} {args.ndim}D subjects {tuple(shape)} to {out} "
          f"(train/val/test {description['numTraining']}/{len(description['registration_val'])}/"
          f"{len(description['registration_test'])}); inverse error in lungs/liver <= {max(errors):.3f} voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
