"""Display orientation from hand-built affines: the plane, the transpose and flips, and the rule that up is superior
(anterior in axial views) and the patient's right is on the viewer's left, for any axis order and sign."""
import itertools

import numpy as np
import pytest

from file_formats import rotation
from hypermorph_spatially_adaptive.data.orientation import display_view

CORONAL_PHANTOM = np.array([[2.0, 0, 0, 0], [0, 0, -1, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])  # axes: right, superior
LPS_AXIAL = np.diag([-0.7, -0.7, 2.5, 1.0])  # a DICOM/ITK volume read as RAS: i to the left, j posterior


@pytest.mark.parametrize("affine,axes,expected", [
    (CORONAL_PHANTOM, (0, 1), ("coronal", True, True, True)),
    (np.eye(4), (0, 1), ("axial", True, True, True)),
    (LPS_AXIAL, (0, 1), ("axial", True, False, False)),
    (np.eye(4), (0, 2), ("coronal", True, True, True)),
    (np.eye(4), (1, 2), ("sagittal", True, True, True)),
    (np.diag([1.0, -1.0, -1.0, 1.0])[:, [2, 0, 1, 3]], (0, 1), ("coronal", False, False, True)),
])
def test_hand_built_affines(affine, axes, expected):
    view = display_view(affine, axes)
    assert (view.plane, view.transpose, view.flip_rows, view.flip_cols) == expected


def test_the_coronal_phantom_shows_superior_up_and_the_patients_right_on_the_left():
    view = display_view(CORONAL_PHANTOM)
    marker = np.zeros((6, 4))
    marker[5, 3] = 1  # the most right (axis 0 high) and most superior (axis 1 high) voxel
    assert view.image(marker)[0, 0] == 1 and view.edges == ("S", "I", "R", "L")
    assert tuple(int(v) for v in view.points(np.array(5), np.array(3), marker.shape)) == (0, 0)


def _orderings():
    # Every assignment of array axes to world axes with every sign, each slightly rotated.
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            linear = np.zeros((3, 3))
            for axis, (world, sign) in enumerate(zip(permutation, signs)):
                linear[world, axis] = sign * (1.0 + 0.5 * axis)
            yield rotation(0.15, -0.1, 0.2) @ linear


@pytest.mark.parametrize("axes", [(0, 1), (0, 2), (1, 2)])
def test_up_is_superior_or_anterior_and_left_is_the_patients_right_for_any_axis_order(axes):
    for linear in _orderings():
        affine = np.eye(4)
        affine[:3, :3] = linear
        view = display_view(affine, axes)
        shape = [5, 7]
        index = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1).astype(float)
        voxel = np.zeros((*shape, 3))
        voxel[..., axes[0]], voxel[..., axes[1]] = index[..., 0], index[..., 1]
        world = voxel @ linear.T
        down, across = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}[view.plane]
        shown_down, shown_across = view.image(world[..., down]), view.image(world[..., across])
        assert np.all(np.diff(shown_down, axis=0) < 0), (view, linear)  # rows run towards -S (or -A)
        assert np.all(np.diff(shown_across, axis=1) < 0), (view, linear)  # columns run towards -R (or -A)
        rows, cols = view.points(index[..., 0], index[..., 1], shape)
        reference = view.image(world[..., down])
        np.testing.assert_allclose(reference[rows.astype(int), cols.astype(int)], world[..., down])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="4x4"):
        display_view(np.eye(3))
    with pytest.raises(ValueError, match="axes"):
        display_view(np.eye(4), (1, 1))
    with pytest.raises(ValueError, match="2D"):
        display_view(np.eye(4)).image(np.zeros((2, 2, 2)))
