"""Dataset readers on tiny fake trees written in the real layouts (file names, JSON keys, CSV format)."""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hypermorph_spatially_adaptive import data as datasets
from hypermorph_spatially_adaptive.data import (Grid, crop_grid, map_points, rescale_grid, resample_displacement,
                                                resample_volume, slice_grid)

SHAPE = (12, 10, 14)
SPACING = (1.5, 1.5, 1.5)


# ---------------------------------------------------------------------------------------------------------------
# Fake trees
# ---------------------------------------------------------------------------------------------------------------

def affine_of(spacing, origin=(0.0, 0.0, 0.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def save(path, array, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


def save_points(path, points):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(points, dtype=np.float64), delimiter=",", fmt="%.4f")  # no header, like Learn2Reg


def write_case(root, prefix, case, fixed, moving, affine_f, affine_m, mask_f, mask_m, kp_f, kp_m, folder="Tr"):
    for index, image, affine, mask, points in ((0, fixed, affine_f, mask_f, kp_f), (1, moving, affine_m, mask_m, kp_m)):
        name = f"{prefix}_{case}_000{index}"
        save(root / f"images{folder}" / f"{name}.nii.gz", image.astype(np.float32), affine)
        save(root / f"masks{folder}" / f"{name}.nii.gz", mask.astype(np.uint8), affine)
        save_points(root / f"keypoints{folder}" / f"{name}.csv", points)


def write_json(root, prefix, train, val, test=(), **extra):
    def entries(cases, folder="imagesTr"):
        return [{"fixed": f"./{folder}/{prefix}_{c}_0000.nii.gz", "moving": f"./{folder}/{prefix}_{c}_0001.nii.gz"}
                for c in cases]

    description = {
        "name": prefix, "tensorImageShape": {"0": list(SHAPE)}, "modality": {"0": "CT"},
        "numTraining": 999,  # deliberately wrong: the reader trusts the lists
        "training_paired_images": entries(train),
        "training": [{"image": f"./imagesTr/{prefix}_{c}_000{i}.nii.gz",
                      "keypoints": f"./keypointsTr/{prefix}_{c}_000{i}.nii.gz"} for c in train for i in (0, 1)],
        "registration_val": entries(val), "registration_test": entries(test, "imagesTs"), **extra,
    }
    (root / f"{prefix}_dataset.json").write_text(json.dumps(description))


def random_case(rng, shape=SHAPE):
    """HU-like images, a box mask and 4 keypoints inside the box (moving = fixed + 1 voxel along axis 0)."""
    fixed = rng.uniform(-1000, 400, size=shape)
    moving = np.roll(fixed, -1, axis=0)
    mask = np.zeros(shape, np.uint8)
    mask[2:-2, 2:8, 2:-2] = 1
    kp_f = np.array([[3.0, 3.0, 3.0], [5.0, 4.0, 6.0], [8.0, 7.0, 10.0], [6.0, 5.0, 4.0]])
    return fixed, moving, mask, kp_f, kp_f - [1.0, 0.0, 0.0]


def make_nlst(root, cases=("0001", "0002", "0003", "0004"), val=("0004",), seed=0, prefix="NLST"):
    rng = np.random.default_rng(seed)
    affine = affine_of(SPACING, (-9.0, -7.5, -10.5))
    for case in cases:
        fixed, moving, mask, kp_f, kp_m = random_case(rng)
        write_case(root, prefix, case, fixed, moving, affine, affine, mask, mask, kp_f, kp_m)
    # Like NLST_dataset.json: the validation pairs are also listed among the training pairs.
    write_json(root, prefix, train=cases, val=val)
    return root


def make_phantom(root, ndim=2, shape=(16, 20), spacing=(1.0, 1.0), displacement=(1.0, -2.0), cases=("0001", "0002"),
                 val=(), test=()):
    spacing3 = (*spacing, 1.0) if ndim == 2 else spacing
    affine = affine_of(spacing3)
    rng = np.random.default_rng(3)
    u = np.asarray(displacement, dtype=np.float32)
    for case in (*cases, *val, *test):
        fixed = rng.uniform(-1000, 1000, size=shape).astype(np.float32)
        labels = rng.integers(0, 5, size=shape).astype(np.uint8)
        kp_f = np.array([[4.0] * ndim, [8.0] * ndim, [10.0] + [6.0] * (ndim - 1)])
        for index, points in ((0, kp_f), (1, kp_f + u)):
            name = f"PHANTOM_{case}_000{index}"
            save(root / "imagesTr" / f"{name}.nii.gz", fixed, affine)
            save(root / "masksTr" / f"{name}.nii.gz", (labels > 0).astype(np.uint8), affine)
            save(root / "labelsTr" / f"{name}.nii.gz", labels, affine)
            save_points(root / "keypointsTr" / f"{name}.csv", points)
        save(root / "groundtruthTr" / f"disp_{case}_{case}.nii.gz", np.broadcast_to(u, (*shape, ndim)).copy(), affine)
    write_json(root, "PHANTOM", train=cases, val=val, test=test, ndim=ndim, spacing=list(spacing),
               labels={"0": "background", "1": "soft_tissue", "2": "lung", "3": "bone", "4": "liver"})
    # The phantom's test pairs live in imagesTr, like its other splits.
    description = json.loads((root / "PHANTOM_dataset.json").read_text())
    for entry in description["registration_test"]:
        entry["fixed"] = entry["fixed"].replace("imagesTs", "imagesTr")
        entry["moving"] = entry["moving"].replace("imagesTs", "imagesTr")
    (root / "PHANTOM_dataset.json").write_text(json.dumps(description))
    return root


ACDC_SHAPE = (20, 24, 6)
ACDC_SPACING = (1.25, 1.25, 10.0)


def acdc_labels(complete_slices, centre=(12, 9)):
    """Label volume with classes 1..3 around ``centre`` on ``complete_slices`` and only class 1 on slice 1."""
    labels = np.zeros(ACDC_SHAPE, np.uint8)
    x, y = centre
    for z in complete_slices:
        labels[x - 2:x + 3, y - 2:y + 3, z] = 2  # myocardium ring
        labels[x - 1:x + 2, y - 1:y + 2, z] = 3  # lv
        labels[x - 2, y - 2, z] = 1  # rv (one voxel keeps the centroid hand-computable)
    labels[3, 3, 1] = 1
    return labels


def make_acdc(root, patients=(1, 2, 3), ed=1, es=3, layout="database/training", complete=None):
    """ACDC patients; ``complete[number] = (ED slices, ES slices)`` holding every class (default (2-4), (3-5))."""
    rng = np.random.default_rng(5)
    affine = affine_of(ACDC_SPACING, (-12.0, -15.0, 0.0))
    for number in patients:
        folder = root / layout / f"patient{number:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        ed_slices, es_slices = (complete or {}).get(number, ((2, 3, 4), (3, 4, 5)))
        for frame, slices in ((ed, ed_slices), (es, es_slices), (2, (0, 1, 2, 3, 4, 5))):
            stem = folder / f"patient{number:03d}_frame{frame:02d}"
            save(Path(f"{stem}.nii.gz"), rng.uniform(0, 500, size=ACDC_SHAPE).astype(np.float32), affine)
            save(Path(f"{stem}_gt.nii.gz"), acdc_labels(slices), affine)
    return root


# ---------------------------------------------------------------------------------------------------------------
# Functional core
# ---------------------------------------------------------------------------------------------------------------

def test_rescale_grid_keeps_first_voxel_and_counts_voxels_inside_the_extent():
    grid = Grid(SHAPE, affine_of(SPACING, (1.0, 2.0, 3.0)))
    coarse = rescale_grid(grid, (3.0, 3.0, 3.0))
    # floor(11 * 1.5 / 3) + 1 = 6, floor(9 * 0.5) + 1 = 5, floor(13 * 0.5) + 1 = 7
    assert coarse.shape == (6, 5, 7)
    np.testing.assert_allclose(coarse.affine, affine_of((3.0, 3.0, 3.0), (1.0, 2.0, 3.0)))
    fine = rescale_grid(grid, (0.75, 1.5, 1.5))
    assert fine.shape == (23, 10, 14)


def test_crop_grid_window_start_rounds_half_up_around_the_centre():
    grid = Grid((12, 10, 1), np.eye(4))
    assert crop_grid(grid, (9, 13, 1)).affine[:3, 3].tolist() == [2.0, -1.0, 0.0]
    assert crop_grid(grid, (4, 4, 1), center=(5.5, 0.0, 0.0)).affine[:3, 3].tolist() == [4.0, -1.0, 0.0]


def test_slice_grid_is_one_voxel_thick_at_the_slice_position():
    grid = slice_grid(Grid(SHAPE, affine_of(SPACING, (1.0, 2.0, 3.0))), axis=1, index=4)
    assert grid.shape == (12, 1, 14)
    np.testing.assert_allclose(grid.affine[:3, 3], [1.0, 2.0 + 4 * 1.5, 3.0])
    with pytest.raises(ValueError, match=r"slice_index must lie in \[0, 9\]"):
        slice_grid(Grid(SHAPE, np.eye(4)), axis=1, index=10)


def test_integer_crop_and_pad_copy_values_exactly():
    array = np.arange(12 * 10 * 14, dtype=np.float32).reshape(SHAPE)
    grid = crop_grid(Grid(SHAPE, affine_of(SPACING)), (8, 12, 14))
    out = resample_volume(array, affine_of(SPACING), grid, cval=-1.0)
    np.testing.assert_array_equal(out[:, 1:11], array[2:10])
    assert (out[:, 0] == -1).all() and (out[:, 11] == -1).all()


def test_linear_resampling_of_a_ramp_is_exact_and_nearest_keeps_integer_labels():
    ramp = np.broadcast_to(np.arange(SHAPE[0], dtype=np.float32)[:, None, None], SHAPE).copy()
    grid = rescale_grid(Grid(SHAPE, affine_of(SPACING)), (0.75, 1.5, 3.0))
    out = resample_volume(ramp, affine_of(SPACING), grid, order=1)
    np.testing.assert_allclose(out[:, 0, 0], np.arange(23) * 0.5, atol=1e-5)
    labels = (ramp > 5).astype(np.int64)
    out_labels = resample_volume(labels, affine_of(SPACING), grid, order=0)
    assert out_labels.dtype == np.int64 and set(np.unique(out_labels)) == {0, 1}


def test_round_off_at_the_image_edge_keeps_the_border_voxels():
    ones = np.ones(SHAPE, np.float32)
    grid = Grid(SHAPE, affine_of(SPACING) @ np.diag([1.0 + 1e-5, 1.0, 1.0, 1.0]))  # last sample 1e-4 beyond the edge
    np.testing.assert_allclose(resample_volume(ones, affine_of(SPACING), grid, order=1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(resample_volume(ones.astype(np.int64), affine_of(SPACING), grid, order=0), 1)
    # Half a voxel or more outside is background.
    shifted = Grid(SHAPE, affine_of(SPACING) @ np.diag([1.06, 1.0, 1.0, 1.0]))  # last sample at 11.66
    assert resample_volume(ones, affine_of(SPACING), shifted, order=0)[-1].max() == 0.0


def test_map_points_goes_through_world_coordinates():
    source, target = affine_of((3.0, 3.0, 3.0), (3.0, 0.0, -3.0)), affine_of(SPACING)
    points = map_points(np.array([[2.0, 2.0, 3.0]]), source, target)
    np.testing.assert_allclose(points, [[6.0, 4.0, 4.0]])  # world (9, 6, 6) / 1.5
    np.testing.assert_allclose(map_points(points, target, source), [[2.0, 2.0, 3.0]])


def test_resampled_displacement_is_converted_to_the_new_voxel_units():
    field = np.zeros((3, *SHAPE), np.float32)
    field[0], field[2] = 2.0, -3.0
    grid = crop_grid(rescale_grid(Grid(SHAPE, affine_of(SPACING)), (3.0, 1.5, 0.75)), (4, 10, 32))
    out = resample_displacement(field, affine_of(SPACING), grid)
    assert out.shape == (3, 4, 10, 32)  # axis 2: 27 voxels padded by 2 before, 3 after
    np.testing.assert_allclose(out[0, :, :, 3:-3], 1.0, atol=1e-6)  # 2 voxels of 1.5 mm = 1 voxel of 3 mm
    np.testing.assert_allclose(out[2, :, :, 3:-3], -6.0, atol=1e-6)
    # Padding: new voxel 0 is one old voxel outside (0); new voxel 1 is on the edge of the old extent (half).
    np.testing.assert_allclose(out[2, :, :, 0], 0.0)
    np.testing.assert_allclose(out[2, :, :, 1], -3.0, atol=1e-6)


def test_intensity_normalisations_hand_values():
    np.testing.assert_allclose(datasets.window_ct(np.array([-2000.0, -1000.0, 0.0, 500.0, 3000.0])),
                               [0.0, 0.0, 0.5, 0.75, 1.0])
    image = np.arange(101, dtype=np.float64)  # percentiles 1 and 99 are 1 and 99
    out = datasets.robust_minmax(image)
    np.testing.assert_allclose(out[[0, 1, 50, 99, 100]], [0.0, 0.0, 49 / 98, 1.0, 1.0], atol=1e-6)
    assert out.dtype == np.float32


def test_read_keypoints_reads_every_row(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text("1.5,2.0,3.0\n4.0,5.0,6.25\n")
    np.testing.assert_allclose(datasets.read_keypoints(path, 3), [[1.5, 2.0, 3.0], [4.0, 5.0, 6.25]])
    with pytest.raises(ValueError, match=r"k2\.csv.*3 columns"):
        datasets.read_keypoints(_write(tmp_path / "k2.csv", "1,2\n"), 3)
    with pytest.raises(ValueError, match="header"):
        datasets.read_keypoints(_write(tmp_path / "h.csv", "x,y,z\n1,2,3\n"), 3)


def _write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------------
# NLST
# ---------------------------------------------------------------------------------------------------------------

def test_nlst_item_keys_dtypes_and_shapes_3d(tmp_path):
    data = datasets.get_dataset("nlst", make_nlst(tmp_path), "train")
    item = data[0]
    assert set(item) == {"fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask",
                         "fixed_keypoints", "moving_keypoints", "spacing", "affine", "pair_id"}
    assert item["fixed"].shape == item["moving"].shape == (1, *SHAPE) and item["fixed"].dtype == torch.float32
    assert item["fixed_labels"].dtype == torch.int64 and item["fixed_labels"].shape == (1, *SHAPE)
    assert item["fixed_mask"].dtype == torch.float32
    assert item["fixed_keypoints"].shape == item["moving_keypoints"].shape == (4, 3)
    assert item["fixed_keypoints"].dtype == torch.float32
    assert item["spacing"].dtype == torch.float64 and item["spacing"].tolist() == list(SPACING)
    assert item["affine"].dtype == torch.float64 and item["affine"].shape == (4, 4)
    assert item["pair_id"] == "0001" and 0.0 <= item["fixed"].min() and item["fixed"].max() <= 1.0
    assert data.class_names == ("background", "lung") and data.num_classes == 2 and data.ndim == 3
    # Fallback labels are the lung mask; keypoints come back exactly (first row included).
    torch.testing.assert_close(item["fixed_labels"].float(), item["fixed_mask"])
    np.testing.assert_allclose(item["fixed_keypoints"][0].numpy(), [3.0, 3.0, 3.0])
    assert "nlst" in data.describe() and "registration_val" in data.describe()


def test_nlst_validation_pairs_are_excluded_from_training(tmp_path):
    root = make_nlst(tmp_path)
    train, val = datasets.get_dataset("nlst", root, "train"), datasets.get_dataset("nlst", root, "val")
    assert train.pair_ids == ["0001", "0002", "0003"] and val.pair_ids == ["0004"]
    assert not set(train.pair_ids) & set(val.pair_ids)
    assert datasets.get_dataset("nlst", root, "train", pairs=["0002"]).pair_ids == ["0002"]


def test_nlst_keypoint_on_bright_voxel_stays_on_it_after_resample_and_crop(tmp_path):
    root = make_nlst(tmp_path, cases=("0001",), val=())
    fixed = np.full(SHAPE, -1000.0)
    fixed[4, 6, 8] = 1000.0
    affine = affine_of(SPACING)
    mask = np.ones(SHAPE, np.uint8)
    kp = np.array([[4.0, 6.0, 8.0], [0.0, 0.0, 0.0], [10.0, 8.0, 12.0]])
    write_case(root, "NLST", "0001", fixed, fixed, affine, affine, mask, mask, kp, kp)
    data = datasets.get_dataset("nlst", root, "train", spacing=(3.0, 3.0, 3.0), shape=(4, 4, 4))
    item = data[0]
    # Resampled grid (6, 5, 7): point (2, 3, 4); centred 4^3 window starts at (1, 1, 2) -> point (1, 2, 2).
    np.testing.assert_allclose(item["fixed_keypoints"].numpy(), [[1.0, 2.0, 2.0]])
    np.testing.assert_allclose(item["moving_keypoints"].numpy(), [[1.0, 2.0, 2.0]])
    assert item["fixed"][0, 1, 2, 2] == 1.0 and item["fixed"].sum() == 1.0
    assert item["spacing"].tolist() == [3.0, 3.0, 3.0]
    # The affine maps the keypoint to the world position of the original bright voxel.
    world = item["affine"].numpy() @ np.array([1.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(world[:3], np.array([4.0, 6.0, 8.0]) * 1.5)


def test_nlst_2d_mode_takes_the_coronal_slice_through_the_mask_middle(tmp_path):
    root = make_nlst(tmp_path, cases=("0001",), val=())
    fixed = np.random.default_rng(1).uniform(-1000, 0, SHAPE)
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:9, 2:8, 4:10] = 1  # extent 2..7 along axis 1 -> middle slice 4
    affine = affine_of(SPACING)
    kp_f = np.array([[3.0, 4.2, 5.0], [4.0, 4.6, 6.0], [5.0, 3.5, 7.0], [6.0, 1.0, 8.0]])
    kp_m = kp_f + [1.0, 2.0, -1.0]
    write_case(root, "NLST", "0001", fixed, fixed, affine, affine, mask, mask, kp_f, kp_m)
    item = datasets.get_dataset("nlst", root, "train", ndim=2)[0]
    assert item["fixed"].shape == (1, 12, 14) and item["fixed_mask"].shape == (1, 12, 14)
    np.testing.assert_allclose(item["fixed"][0].numpy(), datasets.window_ct(fixed[:, 4, :]), atol=1e-6)
    # Kept: within [-0.5, 0.5) of slice 4 (rows 0 and 2); projected to (axis 0, axis 2).
    np.testing.assert_allclose(item["fixed_keypoints"].numpy(), [[3.0, 5.0], [5.0, 7.0]])
    np.testing.assert_allclose(item["moving_keypoints"].numpy(), [[4.0, 4.0], [6.0, 6.0]])
    assert item["spacing"].tolist() == [1.5, 1.5]
    expected = np.eye(4)[:, [0, 2, 1, 3]] * [1.5, 1.5, 1.5, 1.0]
    expected[1, 3] = 4 * 1.5  # the slice's position along array axis 1
    np.testing.assert_allclose(item["affine"].numpy(), expected)
    # In-plane resampling and an explicit slice.
    item = datasets.get_dataset("nlst", root, "train", ndim=2, slice_index=5, spacing=(3.0, 3.0), shape=(8, 8))[0]
    assert item["fixed"].shape == (1, 8, 8) and item["spacing"].tolist() == [3.0, 3.0]


def test_nlst_labels_dir_gives_tissue_classes_and_load_checks_their_range(tmp_path):
    root = make_nlst(tmp_path, cases=("0001",), val=())
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:5] = 1
    labels[5:7] = 2
    labels[7:9] = 3
    for index in (0, 1):
        save(root / "tissue" / f"NLST_0001_000{index}.nii.gz", labels, affine_of(SPACING, (-9.0, -7.5, -10.5)))
    data = datasets.get_dataset("nlst", root, "train", labels_dir="tissue")
    assert data.class_names == ("background", "lung", "bones", "liver")
    assert torch.equal(data[0]["fixed_labels"][0], torch.from_numpy(labels.astype(np.int64)))
    labels[0, 0, 0] = 7
    save(root / "tissue" / "NLST_0001_0001.nii.gz", labels, affine_of(SPACING, (-9.0, -7.5, -10.5)))
    with pytest.raises(ValueError, match=r"NLST_0001_0001\.nii\.gz.*0\.\.3"):
        datasets.get_dataset("nlst", root, "train", labels_dir=str(root / "tissue"))[0]


def test_mask_images_and_cache(tmp_path):
    root = make_nlst(tmp_path, cases=("0001",), val=())
    data = datasets.get_dataset("nlst", root, "train", mask_images=True, cache=True)
    item = data[0]
    assert (item["fixed"][item["fixed_mask"] == 0] == 0).all() and item["fixed"][item["fixed_mask"] == 1].max() > 0
    (root / "imagesTr" / "NLST_0001_0000.nii.gz").unlink()  # a cached item is not read again
    torch.testing.assert_close(data[0]["fixed"], item["fixed"])


def _break(root, what):
    """Damage a valid NLST tree in one way; return the file name the error must mention."""
    affine = affine_of(SPACING, (-9.0, -7.5, -10.5))
    if what == "missing image":
        (root / "imagesTr" / "NLST_0002_0001.nii.gz").unlink()
        return "NLST_0002_0001.nii.gz"
    if what == "missing mask folder":
        for path in (root / "masksTr").iterdir():
            path.unlink()
        (root / "masksTr").rmdir()
        return "masksTr"
    if what == "mask shape":
        save(root / "masksTr" / "NLST_0003_0000.nii.gz", np.zeros((12, 10, 13), np.uint8), affine)
        return "NLST_0003_0000.nii.gz"
    if what == "mask affine":
        save(root / "masksTr" / "NLST_0003_0001.nii.gz", np.zeros(SHAPE, np.uint8), affine_of(SPACING))
        return "NLST_0003_0001.nii.gz"
    if what == "keypoint count":
        save_points(root / "keypointsTr" / "NLST_0002_0001.csv", np.ones((3, 3)))
        return "NLST_0002_0001.csv"
    if what == "missing keypoints":
        (root / "keypointsTr" / "NLST_0001_0000.csv").unlink()
        return "NLST_0001_0000.csv"
    if what == "missing json":
        (root / "NLST_dataset.json").unlink()
        return "NLST_dataset.json"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["missing image", "missing mask folder", "mask shape", "mask affine",
                                  "keypoint count", "missing keypoints", "missing json"])
def test_bad_nlst_tree_fails_at_construction_naming_the_file(tmp_path, what):
    root = make_nlst(tmp_path)
    name = _break(root, what)
    with pytest.raises((ValueError, FileNotFoundError), match=name.replace(".", r"\.")):
        datasets.get_dataset("nlst", root, "train")


@pytest.mark.parametrize("options, message", [
    (dict(slice_index=3), "slice_index must be None"),
    (dict(ndim=2, slice_index=50), r"slice_index 50 is outside .*NLST_0001_0000\.nii\.gz"),
    (dict(hu_window=(100, -100)), "hu_window"),
    (dict(spacing=(1.0, -1.0, 1.0)), "spacing must be 3 positive"),
    (dict(ndim=4), "ndim must be 2, 3 or None"),
    (dict(slice_axis="oblique"), "slice_axis"),
    (dict(class_names=("a", "b")), "class_names needs labels_dir"),
])
def test_bad_options_raise_value_error_at_construction(tmp_path, options, message):
    root = make_nlst(tmp_path, cases=("0001",), val=())
    with pytest.raises(ValueError, match=message):
        datasets.get_dataset("nlst", root, "train", **options)


def test_labels_dir_shape_mismatch_and_empty_splits_fail(tmp_path):
    root = make_nlst(tmp_path, cases=("0001", "0002"), val=("0002",))
    save(root / "tissue" / "NLST_0001_0000.nii.gz", np.zeros((3, 3, 3), np.uint8), affine_of(SPACING))
    save(root / "tissue" / "NLST_0001_0001.nii.gz", np.zeros((3, 3, 3), np.uint8), affine_of(SPACING))
    with pytest.raises(ValueError, match=r"tissue/NLST_0001_0000\.nii\.gz: shape"):
        datasets.get_dataset("nlst", root, "train", labels_dir="tissue")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.get_dataset("nlst", root, "train", labels_dir="nowhere")
    with pytest.raises(ValueError, match="split 'test'.*no pairs"):
        datasets.get_dataset("nlst", root, "test")
    with pytest.raises(ValueError, match="unknown pair ids.*0009"):
        datasets.get_dataset("nlst", root, "val", pairs=["0009"])
    write_json(root, "NLST", train=("0001", "0002"), val=("0001", "0002"))
    with pytest.raises(ValueError, match="split 'train'.*no pairs"):
        datasets.get_dataset("nlst", root, "train")
    write_json(root, "NLST", train=("0001",), val=(), test=("0005",))
    with pytest.raises(FileNotFoundError, match=r"imagesTs/NLST_0005_0000\.nii\.gz"):
        datasets.get_dataset("nlst", root, "test")


def test_nlst_test_split_reads_present_images_without_masks_or_keypoints(tmp_path):
    root = make_nlst(tmp_path, cases=("0001",), val=())
    fixed = np.zeros(SHAPE, np.float32)
    for index in (0, 1):
        save(root / "imagesTs" / f"NLST_0101_000{index}.nii.gz", fixed, affine_of(SPACING))
    write_json(root, "NLST", train=("0001",), val=(), test=("0101",))
    item = datasets.get_dataset("nlst", root, "test")[0]
    assert item["pair_id"] == "0101" and "fixed_keypoints" not in item and "fixed_labels" not in item


# ---------------------------------------------------------------------------------------------------------------
# Lung CT: different grids per pair
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flip", [False, True])
def test_lungct_moving_image_and_keypoints_go_to_the_fixed_grid(tmp_path, flip):
    root = tmp_path
    affine_f = affine_of(SPACING)
    affine_m = affine_of((3.0, 3.0, 3.0), (3.0, 0.0, -3.0))
    moving_shape = (6, 5, 7)
    index_m = np.array([2.0, 2.0, 3.0])  # world (9, 6, 6) -> fixed voxel (6, 4, 4)
    if flip:  # moving stored with axis 0 reversed: same world positions, other array order
        flip_matrix = np.eye(4)
        flip_matrix[0, 0], flip_matrix[0, 3] = -1.0, moving_shape[0] - 1
        affine_m = affine_m @ flip_matrix
        index_m[0] = moving_shape[0] - 1 - index_m[0]
    moving = np.full(moving_shape, -1000.0)
    moving[tuple(index_m.astype(int))] = 1000.0
    fixed = np.full(SHAPE, -1000.0)
    fixed[6, 4, 4] = 1000.0
    mask_f, mask_m = np.ones(SHAPE, np.uint8), np.ones(moving_shape, np.uint8)
    kp_f = np.array([[6.0, 4.0, 4.0], [2.0, 2.0, 2.0]])
    kp_m = np.array([index_m, [1.0, 1.0, 1.0]])
    write_case(root, "LungCT", "0001", fixed, moving, affine_f, affine_m, mask_f, mask_m, kp_f, kp_m)
    write_json(root, "LungCT", train=("0001",), val=())
    item = datasets.get_dataset("lungct", root, "train")[0]
    assert item["moving"].shape == item["fixed"].shape == (1, *SHAPE)
    np.testing.assert_allclose(item["moving_keypoints"][0].numpy(), [6.0, 4.0, 4.0], atol=1e-5)
    assert item["moving"][0, 6, 4, 4] == pytest.approx(1.0, abs=1e-5)
    assert item["moving"][0].argmax() == np.ravel_multi_index((6, 4, 4), SHAPE)
    # The second point: moving voxel (1,1,1) (or its flipped index) is world (6, 3, 0) = fixed voxel (4, 2, 0).
    expected = (4.0, 2.0, 0.0) if not flip else ((3.0 + 3.0 * 4) / 1.5, 2.0, 0.0)
    np.testing.assert_allclose(item["moving_keypoints"][1].numpy(), expected, atol=1e-5)
    # The moving mask (all ones on a smaller field of view) covers only the overlap of the two grids.
    assert 0 < item["moving_mask"].sum() < np.prod(SHAPE)


# ---------------------------------------------------------------------------------------------------------------
# Phantom
# ---------------------------------------------------------------------------------------------------------------

def test_phantom_2d_items_hold_the_true_displacement(tmp_path):
    root = make_phantom(tmp_path, val=("0003",), test=("0004",))
    data = datasets.get_dataset("phantom", root, "train")
    assert data.ndim == 2 and data.class_names == ("background", "soft_tissue", "lung", "bone", "liver")
    assert data.pair_ids == ["0001", "0002"]
    assert datasets.get_dataset("phantom", root, "test").pair_ids == ["0004"]
    item = data[1]
    assert item["gt_displacement"].shape == (2, 16, 20) and item["gt_displacement"].dtype == torch.float32
    assert item["fixed"].shape == (1, 16, 20) and item["fixed_labels"].max() <= 4
    torch.testing.assert_close(item["gt_displacement"][:, 5, 7], torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(item["moving_keypoints"] - item["fixed_keypoints"], torch.tensor([[1.0, -2.0]] * 3))


def test_phantom_resampling_converts_displacement_and_keypoints_consistently(tmp_path):
    root = make_phantom(tmp_path, spacing=(1.0, 0.5))
    item = datasets.get_dataset("phantom", root, "train", spacing=(2.0, 1.0), shape=(8, 8))[0]
    # Voxels twice as large: the displacement of (1, -2) old voxels is (0.5, -1) new voxels.
    torch.testing.assert_close(item["gt_displacement"][:, 2:6, 2:6],
                               torch.tensor([0.5, -1.0])[:, None, None].expand(2, 4, 4))
    kept = item["fixed_keypoints"]
    assert len(kept) == len(item["moving_keypoints"]) >= 1
    torch.testing.assert_close(item["moving_keypoints"] - kept, torch.tensor([[0.5, -1.0]]).expand(len(kept), 2))
    assert item["spacing"].tolist() == [2.0, 1.0]


def test_phantom_bad_displacement_header_and_3d_request(tmp_path):
    root = make_phantom(tmp_path)
    with pytest.raises(ValueError, match="ndim=3"):
        datasets.get_dataset("phantom", root, "train", ndim=3)
    wrong_components = np.zeros((16, 20, 3), np.float32)  # a 2D field needs 2 components
    save(root / "groundtruthTr" / "disp_0002_0002.nii.gz", wrong_components, affine_of((1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"disp_0002_0002\.nii\.gz"):
        datasets.get_dataset("phantom", root, "train")


def test_phantom_3d_in_2d_mode_drops_the_out_of_plane_component(tmp_path):
    root = make_phantom(tmp_path, ndim=3, shape=(8, 10, 12), spacing=(1.0, 1.0, 1.0), displacement=(1.0, 2.0, 3.0),
                        cases=("0001",))
    item = datasets.get_dataset("phantom", root, "train", ndim=2, slice_index=4)[0]
    assert item["fixed"].shape == (1, 8, 12) and item["gt_displacement"].shape == (2, 8, 12)
    torch.testing.assert_close(item["gt_displacement"][:, 3, 3], torch.tensor([1.0, 3.0]))
    np.testing.assert_allclose(item["fixed_keypoints"].numpy(), [[4.0, 4.0]])  # the only point on slice 4


# ---------------------------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------------------------

def test_acdc_pairs_ed_with_es_from_info_cfg_and_picks_the_middle_complete_slice(tmp_path):
    root = make_acdc(tmp_path, complete={2: ((1, 2, 3, 4, 5), (1, 2, 3, 4, 5))})
    data = datasets.get_dataset("acdc", root, "train", train_ids=[1, 2], val_ids=[3], test_ids=[], spacing=None,
                                shape=None)
    assert data.pair_ids == ["patient001", "patient002"]
    assert data.class_names == ("background", "rv", "myocardium", "lv")
    item = data[0]
    # ED slices 2-4 and ES slices 3-5 are complete: both frames on 3 and 4; centre 3.5 -> the lower, 3.
    frame = nib.load(str(root / "database/training/patient001/patient001_frame01.nii.gz")).get_fdata()
    np.testing.assert_allclose(item["fixed"][0].numpy(), datasets.robust_minmax(frame)[:, :, 3], atol=1e-6)
    es = nib.load(str(root / "database/training/patient001/patient001_frame03.nii.gz")).get_fdata()
    np.testing.assert_allclose(item["moving"][0].numpy(), datasets.robust_minmax(es)[:, :, 3], atol=1e-6)
    assert item["fixed"].shape == (1, 20, 24) and item["fixed_labels"].dtype == torch.int64
    assert item["spacing"].tolist() == [1.25, 1.25] and "fixed_keypoints" not in item
    # Patient 2: complete slices 1-5 -> the middle one, 3 (not the first).
    frame = nib.load(str(root / "database/training/patient002/patient002_frame01.nii.gz")).get_fdata()
    np.testing.assert_allclose(data[1]["fixed"][0].numpy(), datasets.robust_minmax(frame)[:, :, 3], atol=1e-6)
    every = datasets.get_dataset("acdc", root, "train", train_ids=[1], val_ids=[], test_ids=[], slices="all")
    assert every.pair_ids == ["patient001_z03", "patient001_z04"]


def test_acdc_crops_around_the_heart_and_resamples_in_plane(tmp_path):
    root = make_acdc(tmp_path, patients=(1,), layout="training")
    labels = acdc_labels((2, 3, 4))
    # Foreground of both frames on slice 3: the 5x5 block around (12, 9), so the centroid is (12, 9).
    item = datasets.get_dataset("acdc", root, "train", train_ids=[1], val_ids=[], test_ids=[], spacing=None,
                                shape=(8, 8))[0]
    # Window start floor(12 - 3.5 + 0.5) = 9 and floor(9 - 3.5 + 0.5) = 6.
    np.testing.assert_array_equal(item["fixed_labels"][0].numpy(), labels[9:17, 6:14, 3])
    item = datasets.get_dataset("acdc", root, "train", train_ids=[1], val_ids=[], test_ids=[],
                                spacing=(2.5, 2.5), shape=(12, 12))[0]
    assert item["fixed"].shape == (1, 12, 12) and item["spacing"].tolist() == [2.5, 2.5]
    assert 0.0 <= item["fixed"].min() and item["fixed"].max() <= 1.0
    centroid = torch.nonzero(item["fixed_labels"][0] > 0).float().mean(0)
    assert torch.all((centroid - 5.5).abs() <= 1.0)  # the heart stays in the middle of the crop
    volume = datasets.get_dataset("acdc", root, "train", train_ids=[1], val_ids=[], test_ids=[], ndim=3,
                                  shape=(8, 8), spacing=None)[0]
    assert volume["fixed"].shape == (1, 8, 8, 6) and volume["spacing"].tolist() == [1.25, 1.25, 10.0]


@pytest.mark.filterwarnings("ignore:ACDC")
def test_acdc_default_splits_are_disjoint_and_bad_input_fails(tmp_path):
    root = make_acdc(tmp_path, patients=(80, 81, 91))
    with pytest.warns(UserWarning, match="not in"):
        splits = {s: datasets.get_dataset("acdc", root, s).pair_ids for s in datasets.SPLITS}
    assert splits == {"train": ["patient080"], "val": ["patient081"], "test": ["patient091"]}
    with pytest.raises(ValueError, match="share patients"):
        datasets.get_dataset("acdc", root, "train", train_ids=[80, 81])
    (root / "database/training/patient081/Info.cfg").unlink()
    with pytest.raises(FileNotFoundError, match=r"patient081/Info\.cfg"):
        datasets.get_dataset("acdc", root, "val")
    (root / "database/training/patient091/patient091_frame03_gt.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"patient091_frame03_gt\.nii\.gz"):
        datasets.get_dataset("acdc", root, "test")
    save(root / "database/training/patient080/patient080_frame01_gt.nii.gz", np.full(ACDC_SHAPE, 4, np.uint8),
         affine_of(ACDC_SPACING, (-12.0, -15.0, 0.0)))
    with pytest.raises(ValueError, match=r"patient080_frame01_gt\.nii\.gz.*0\.\.3"):
        datasets.get_dataset("acdc", root, "train", train_ids=[80], val_ids=[], test_ids=[])
    with pytest.raises(FileNotFoundError, match="testing"):
        datasets.get_dataset("acdc", root, "test", test_source="testing")
    make_acdc(root, patients=(101,), layout="database/testing")
    assert datasets.get_dataset("acdc", root, "test", test_source="testing").pair_ids == ["patient101"]


# ---------------------------------------------------------------------------------------------------------------
# Registry and batching
# ---------------------------------------------------------------------------------------------------------------

def test_collate_pairs_stacks_tensors_and_keeps_keypoints_as_lists(tmp_path):
    data = datasets.get_dataset("nlst", make_nlst(tmp_path), "train", shape=(8, 8, 8))
    loader = DataLoader(data, batch_size=3, collate_fn=datasets.collate_pairs)
    batch = next(iter(loader))
    assert batch["fixed"].shape == (3, 1, 8, 8, 8) and batch["fixed_labels"].dtype == torch.int64
    assert batch["spacing"].shape == (3, 3) and batch["affine"].shape == (3, 4, 4)
    assert batch["pair_id"] == ["0001", "0002", "0003"]
    assert isinstance(batch["fixed_keypoints"], list) and len(batch["fixed_keypoints"]) == 3
    small = dict(data[0], fixed=torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="'fixed'.*shape="):
        datasets.collate_pairs([data[0], small])
    with pytest.raises(ValueError, match="same keys"):
        datasets.collate_pairs([data[0], {k: v for k, v in data[1].items() if k != "fixed_mask"}])


def test_get_dataset_rejects_unknown_names_and_options(tmp_path):
    assert datasets.available_datasets() == ("nlst", "lungct", "acdc", "phantom", "pairs")
    with pytest.raises(ValueError, match="nlst, lungct, acdc, phantom"):
        datasets.get_dataset("brats", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown option.*spacings"):
        datasets.get_dataset("nlst", tmp_path, "train", spacings=(1, 1, 1))
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.get_dataset("nlst", tmp_path, "training")
    with pytest.raises(FileNotFoundError, match="missing"):
        datasets.get_dataset("acdc", tmp_path / "missing", "train")
    with pytest.raises(ValueError, match="shape must be 3 positive integers"):
        datasets.get_dataset("nlst", make_nlst(tmp_path), "train", shape=(8, 8))


@pytest.mark.parametrize("kind", ["image", "labels", "displacement"])
def test_the_scan_names_a_file_with_nan_values_and_without_it_the_pair_names_it_when_loaded(kind, phantom_root,
                                                                                           tmp_path):
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    folder, pattern = {"image": ("imagesTr", "PHANTOM_0002_0000.nii.gz"), "labels": ("labelsTr", "PHANTOM_0002_0001*"),
                       "displacement": ("groundtruthTr", "disp_0002_*")}[kind]
    path = sorted((root / folder).glob(pattern))[0]
    image = nib.load(str(path))
    array = np.asarray(image.get_fdata(), dtype=np.float32)
    array[(1, 1) + (0,) * (array.ndim - 2)] = np.nan  # a 2D phantom's files are one slice of 3D
    nib.save(nib.Nifti1Image(array, image.affine), str(path))
    with pytest.raises(ValueError, match=path.name):
        datasets.get_dataset("phantom", root, "train")
    dataset = datasets.get_dataset("phantom", root, "train", scan=False)
    dataset[0]  # pair 0001: unaffected
    with pytest.raises(ValueError, match=path.name):
        dataset[dataset.pair_ids.index("0002")]


def test_a_file_changed_after_a_good_scan_is_read_again(phantom_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    datasets.get_dataset("phantom", root, "test")
    path = sorted((root / "imagesTr").glob("PHANTOM_0006_0001.nii.gz"))[0]
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{path.name}: cannot read the voxel data"):
        datasets.get_dataset("phantom", root, "test")


@pytest.mark.parametrize("value,needle", [(5, "must be a file path"), (None, "must be a file path"),
                                          ("../outside/PHANTOM_0006_0000.nii.gz", "leaves the dataset folder"),
                                          ("/tmp/PHANTOM_0006_0000.nii.gz", "leaves the dataset folder")])
def test_description_paths_are_relative_paths_inside_the_data_root(value, needle, phantom_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    path = root / "PHANTOM_dataset.json"
    description = json.loads(path.read_text())
    description["registration_test"][0]["fixed"] = value
    path.write_text(json.dumps(description))
    with pytest.raises(ValueError, match=rf"PHANTOM_dataset.json: registration_test\[0\].fixed .*{needle}"):
        datasets.get_dataset("phantom", root, "test")
