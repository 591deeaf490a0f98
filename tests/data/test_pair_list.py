"""The pairs-CSV dataset: every format gives the same item, the moving image, labels and keypoints are carried onto
the fixed grid through physical space, splits, class names, 2D modes, and errors that name the CSV and the file."""
import json

import numpy as np
import pytest
import torch

from file_formats import SCENE_CLASSES, write_pair, write_pairs_csv
from hypermorph_spatially_adaptive.data import EmptySplitError, get_dataset, image_io
from hypermorph_spatially_adaptive.data.pair_list import PairListDataset

FORMATS = ["nifti", "mha", "nrrd", "dicom"]
OTHER_GRID = ((14, 18, 15), (2.3, 1.7, 2.1), (0.1, 0.25, -0.2))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The same pair in each format (moving image on another grid), plus a split column and labels."""
    folder = tmp_path_factory.mktemp("cohort")
    rows = []
    for fmt, split in zip(FORMATS, ["train", "train", "val", "test"]):
        (folder / fmt).mkdir()
        cells = write_pair(folder / fmt, "case", fmt, label_fmt=fmt, moving_grid=OTHER_GRID)
        rows.append({key: f"{fmt}/{value}" for key, value in cells.items()} | {"split": split, "pair_id": fmt})
    return write_pairs_csv(folder / "pairs.csv", rows)


def _all(csv_path, **options):
    rows = {}
    for split in ("train", "val", "test"):
        dataset = get_dataset("pairs", csv_path, split, class_names=SCENE_CLASSES, **options)
        rows.update({dataset[i]["pair_id"]: dataset[i] for i in range(len(dataset))})
    return rows


def test_every_format_gives_the_same_item(cohort):
    items = _all(cohort)
    assert sorted(items) == sorted(FORMATS)
    reference = items["nifti"]
    assert reference["fixed"].shape == (1, 16, 16, 16) and reference["fixed"].dtype == torch.float32
    assert reference["fixed_labels"].dtype == torch.int64 and reference["fixed_keypoints"].shape == (12, 3)
    assert 0 <= float(reference["fixed"].min()) and float(reference["fixed"].max()) <= 1
    for fmt in FORMATS[1:]:
        item = items[fmt]
        for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
            torch.testing.assert_close(item[key], reference[key], atol=1e-5, rtol=0, msg=f"{fmt} {key}")
        for key in ("fixed_keypoints", "moving_keypoints", "spacing", "affine"):
            torch.testing.assert_close(item[key].double(), reference[key].double(), atol=1e-4, rtol=0,
                                       msg=f"{fmt} {key}")


def test_the_moving_scene_is_carried_onto_the_fixed_grid_through_physical_space(cohort):
    item = _all(cohort)["mha"]
    # The moving scene is the fixed one moved by (2, -1.5, 1) mm: its keypoints, carried onto the fixed grid,
    # sit at the fixed keypoints plus that motion in fixed voxels.
    affine = item["affine"].numpy()
    motion = np.linalg.solve(affine[:3, :3], [2.0, -1.5, 1.0])
    np.testing.assert_allclose(item["moving_keypoints"].numpy(), item["fixed_keypoints"].numpy() + motion, atol=1e-4)
    # The labels moved with it: most voxels of the moving labels at x + motion are the fixed labels at x.
    shifted = np.round(np.argwhere(item["fixed_labels"][0].numpy() == 2) + motion).astype(int)
    inside = np.all((shifted >= 0) & (shifted < 16), axis=1)
    values = item["moving_labels"][0].numpy()[tuple(shifted[inside].T)]
    assert (values == 2).mean() > 0.8


def test_without_a_split_column_every_pair_is_in_every_split(tmp_path):
    cells = write_pair(tmp_path, "one", "mha")
    csv_path = write_pairs_csv(tmp_path / "list.csv", [cells])
    for split in ("train", "val", "test"):
        dataset = get_dataset("pairs", csv_path, split, classes_json=_classes(tmp_path))
        assert dataset.pair_ids == ["one_fixed_one_moving"] and dataset.class_names == tuple(SCENE_CLASSES)
    # A folder as the root reads its pairs.csv; without label columns no class names are needed.
    write_pairs_csv(tmp_path / "pairs.csv", [{"fixed": cells["fixed"], "moving": cells["moving"]}])
    dataset = get_dataset("pairs", tmp_path, "test")
    assert dataset.class_names == ("background",) and "fixed_labels" not in dataset[0]
    assert dataset.fixed_file(0) == tmp_path / cells["fixed"]


def _classes(folder):
    path = folder / "classes.json"
    path.write_text(json.dumps({str(i): name for i, name in enumerate(SCENE_CLASSES)}))
    return "classes.json"


def test_a_split_column_without_validation_rows_gives_an_empty_split(tmp_path):
    csv_path = write_pairs_csv(tmp_path / "pairs.csv", [dict(write_pair(tmp_path, "t", "mha"), split="train")])
    assert len(get_dataset("pairs", csv_path, "train", class_names=SCENE_CLASSES)) == 1
    with pytest.raises(EmptySplitError, match="split 'val'"):
        get_dataset("pairs", csv_path, "val", class_names=SCENE_CLASSES)


def test_2d_modes_slice_3d_files_by_orientation(cohort):
    coronal = get_dataset("pairs", cohort, "train", class_names=SCENE_CLASSES, ndim=2, shape=(12, 14),
                          spacing=(2.5, 2.5))
    item = coronal[0]
    assert coronal.ndim == 2 and item["fixed"].shape == (1, 12, 14) and item["fixed_keypoints"].shape[1] == 2
    np.testing.assert_allclose(item["spacing"].numpy(), [2.5, 2.5])
    axial = get_dataset("pairs", cohort, "train", class_names=SCENE_CLASSES, ndim=2, slice_axis="axial")
    # The in-plane axes of the two slices differ: the third affine column (the slice axis) is another array axis.
    assert not np.allclose(axial[0]["affine"][:3, 2], item["affine"][:3, 2])


def test_keypoints_in_world_millimetres(tmp_path):
    cells = write_pair(tmp_path, "w", "nrrd")
    voxel = get_dataset("pairs", write_pairs_csv(tmp_path / "voxel.csv", [cells]), "test",
                        class_names=SCENE_CLASSES)[0]
    grids = {side: image_io.read_header(tmp_path / cells[side]).affine for side in ("fixed", "moving")}
    np.testing.assert_allclose(grids["fixed"], voxel["affine"].numpy(), atol=1e-6)
    for units, flip in (("ras", [1, 1, 1]), ("lps", [-1, -1, 1])):
        for side, grid in grids.items():
            points = np.loadtxt(tmp_path / cells[f"{side}_keypoints"], delimiter=",")
            world = (points @ grid[:3, :3].T + grid[:3, 3]) * flip
            np.savetxt(tmp_path / f"{side}_{units}.csv", world, delimiter=",")
        row = dict(cells, fixed_keypoints=f"fixed_{units}.csv", moving_keypoints=f"moving_{units}.csv")
        item = get_dataset("pairs", write_pairs_csv(tmp_path / f"{units}.csv", [row]), "test",
                           class_names=SCENE_CLASSES, keypoint_units=units)[0]
        for key in ("fixed_keypoints", "moving_keypoints"):
            torch.testing.assert_close(item[key], voxel[key], atol=1e-4, rtol=0)


@pytest.mark.parametrize("problem,message", [
    ("missing_file", "fixed image of pair bad not found"),
    ("no_class_names", "class_names"),
    ("bad_column", "header"),
    ("duplicate_id", "pair id 'bad' is also on line 2"),
    ("bad_split", "split must be one of"),
    ("labels_on_another_grid", "does not match"),
    ("one_sided_labels", "fixed_labels and moving_labels together"),
    ("bad_intensity", "intensity must be one of"),
])
def test_bad_lists_are_refused_naming_the_file(problem, message, tmp_path):
    cells = dict(write_pair(tmp_path, "b", "mha"), pair_id="bad")
    rows, options = [cells], {"class_names": SCENE_CLASSES}
    if problem == "missing_file":
        rows = [dict(cells, fixed="nowhere.mha")]
    elif problem == "no_class_names":
        options = {}
    elif problem == "bad_column":
        rows = [dict(cells, fixed_label="x")]
    elif problem == "duplicate_id":
        rows = [cells, cells]
    elif problem == "bad_split":
        rows = [dict(cells, split="training")]
    elif problem == "labels_on_another_grid":
        write_pair(tmp_path, "o", "mha", moving_grid=OTHER_GRID)
        rows = [dict(cells, moving_labels="o_moving_labels.nii.gz")]
    elif problem == "one_sided_labels":
        rows = [dict(cells, moving_labels="")]
    elif problem == "bad_intensity":
        options["intensity"] = "pet"
    csv_path = write_pairs_csv(tmp_path / "pairs.csv", rows)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        PairListDataset(csv_path, "test", **options)
