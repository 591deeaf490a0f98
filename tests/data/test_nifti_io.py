"""Explicit NIfTI pairs read as dataset items, resampling onto the fixed grid, and the written output volumes."""
import nibabel as nib
import numpy as np
import pytest
import torch

from hypermorph_spatially_adaptive import data as datasets
from hypermorph_spatially_adaptive.data import nifti_io

CASE = "PHANTOM_0006"


def _files(root):
    images, labels, points = root / "imagesTr", root / "labelsTr", root / "keypointsTr"
    return dict(fixed=images / f"{CASE}_0000.nii.gz", moving=images / f"{CASE}_0001.nii.gz",
                fixed_labels=labels / f"{CASE}_0000.nii.gz", moving_labels=labels / f"{CASE}_0001.nii.gz",
                fixed_keypoints=points / f"{CASE}_0000.csv", moving_keypoints=points / f"{CASE}_0001.csv")


def _save(path, array, affine):
    nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)).to_filename(str(path))
    return path


def test_phantom_files_read_as_the_dataset_item(phantom_root):
    item = nifti_io.read_pair(**_files(phantom_root), num_classes=5, pair_id="0006")
    expected = datasets.get_dataset("phantom", phantom_root, "test")[0]
    for key in ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_keypoints", "moving_keypoints",
                "spacing", "affine"):
        assert item[key].dtype == expected[key].dtype, key
        torch.testing.assert_close(item[key], expected[key], msg=key)
    assert item["pair_id"] == "0006"


def test_default_pair_id_joins_the_file_stems(phantom_root):
    files = _files(phantom_root)
    item = nifti_io.read_pair(files["fixed"], files["moving"])
    assert item["pair_id"] == f"{CASE}_0000_{CASE}_0001"
    assert "fixed_labels" not in item and "fixed_keypoints" not in item


def test_a_moving_image_on_a_shifted_grid_is_resampled_onto_the_fixed_grid(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((12, 10)).astype(np.float32)
    labels = rng.integers(0, 3, (12, 10)).astype(np.uint8)
    fixed_affine = np.diag([2.0, 3.0, 1.0, 1.0])
    # The moving file holds rows 2.. of the same scene: its first voxel sits 2 voxels (4 mm) further along axis 0.
    moving_affine = fixed_affine.copy()
    moving_affine[0, 3] = 4.0
    fixed = _save(tmp_path / "f.nii.gz", image, fixed_affine)
    moving = _save(tmp_path / "m.nii.gz", image[2:], moving_affine)
    fixed_labels = _save(tmp_path / "fl.nii.gz", labels, fixed_affine)
    moving_labels = _save(tmp_path / "ml.nii.gz", labels[2:], moving_affine)
    np.savetxt(tmp_path / "fk.csv", [[5.0, 4.0]], delimiter=",")
    np.savetxt(tmp_path / "mk.csv", [[3.0, 4.0]], delimiter=",")  # the same point in the moving file's voxels
    item = nifti_io.read_pair(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels,
                              fixed_keypoints=tmp_path / "fk.csv", moving_keypoints=tmp_path / "mk.csv",
                              intensity="none", num_classes=3)
    assert item["moving"].shape == (1, 12, 10)
    torch.testing.assert_close(item["moving"][0, 2:], torch.from_numpy(image[2:]))
    assert torch.equal(item["moving_labels"][0, 2:], torch.from_numpy(labels[2:].astype(np.int64)))
    torch.testing.assert_close(item["moving_keypoints"], torch.tensor([[5.0, 4.0]]))
    torch.testing.assert_close(item["spacing"], torch.tensor([2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="--no-resample"):
        nifti_io.read_pair(fixed, moving, resample=False)


@pytest.mark.parametrize("case,flag", [
    ("labels out of range", "--fixed-labels"),
    ("labels on another grid", "--moving-labels"),
    ("missing moving file", "--moving"),
    ("only fixed labels", "--moving-labels"),
    ("keypoint counts differ", "--moving-keypoints"),
])
def test_bad_files_are_rejected_naming_the_flag(case, flag, tmp_path):
    affine = np.eye(4)
    fixed = _save(tmp_path / "f.nii.gz", np.zeros((8, 8), np.float32), affine)
    moving = _save(tmp_path / "m.nii.gz", np.zeros((8, 8), np.float32), affine)
    good = _save(tmp_path / "l.nii.gz", np.ones((8, 8), np.uint8), affine)
    np.savetxt(tmp_path / "k1.csv", [[1.0, 2.0]], delimiter=",")
    np.savetxt(tmp_path / "k2.csv", [[1.0, 2.0], [3.0, 4.0]], delimiter=",")
    kwargs = {
        "labels out of range": dict(fixed_labels=_save(tmp_path / "bad.nii.gz", np.full((8, 8), 7, np.uint8), affine),
                                    moving_labels=good),
        "labels on another grid": dict(fixed_labels=good,
                                       moving_labels=_save(tmp_path / "small.nii.gz", np.ones((8, 6), np.uint8),
                                                           affine)),
        "missing moving file": dict(moving=tmp_path / "nope.nii.gz"),
        "only fixed labels": dict(fixed_labels=good),
        "keypoint counts differ": dict(fixed_keypoints=tmp_path / "k1.csv", moving_keypoints=tmp_path / "k2.csv"),
    }[case]
    arguments = {"fixed": fixed, "moving": moving, "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=flag):
        nifti_io.read_pair(**arguments)


@pytest.mark.parametrize("shape", [(6, 5), (4, 6, 5)])
def test_written_field_has_the_learn2reg_layout_and_the_fixed_affine(shape, tmp_path):
    ndim = len(shape)
    field = torch.randn(ndim, *shape)
    affine = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -3.0], [0.0, 0.0, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]])
    path = nifti_io.write_displacement(tmp_path / "disp_a_b.nii.gz", field, affine)
    image = nib.load(str(path))
    assert image.shape == (*shape, ndim)
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    back, back_affine = nifti_io.read_displacement(path)
    assert torch.equal(back, field)
    np.testing.assert_allclose(back_affine, affine, atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))
