import math

import pytest
import torch

from hypermorph_spatially_adaptive.core.transform import compose, identity_grid, integrate_velocity, warp


@pytest.mark.parametrize("shape", [(9, 11), (5, 6, 7)])
def test_zero_displacement_returns_the_image(shape):
    image = torch.rand(2, 1, *shape)
    out = warp(image, torch.zeros(2, len(shape), *shape))
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_integer_shift_is_exact_in_the_interior(axis):
    shape = (8, 9, 10)
    image = torch.rand(1, 1, *shape)
    displacement = torch.zeros(1, 3, *shape)
    displacement[:, axis] = 2.0
    out = warp(image, displacement)
    # warped(x) = image(x + 2 e_axis)
    expected = image.narrow(2 + axis, 2, shape[axis] - 2)
    torch.testing.assert_close(out.narrow(2 + axis, 0, shape[axis] - 2), expected, atol=1e-5, rtol=0)


def test_channel_k_moves_along_array_axis_k_in_2d():
    image = torch.zeros(1, 1, 6, 7)
    image[0, 0, 3, 2] = 1.0
    displacement = torch.zeros(1, 2, 6, 7)
    displacement[:, 1] = 1.0  # look one voxel further along axis 1
    out = warp(image, displacement)
    assert out[0, 0, 3, 1] == pytest.approx(1.0, abs=1e-5)


def test_nearest_warp_keeps_integer_labels():
    labels = torch.randint(0, 4, (1, 1, 7, 7))
    displacement = torch.full((1, 2, 7, 7), 0.4)
    out = warp(labels, displacement, mode="nearest")
    assert out.dtype == labels.dtype
    assert torch.equal(out, labels)


def test_identity_grid_holds_voxel_indices():
    grid = identity_grid((3, 4))
    assert grid.shape == (1, 2, 3, 4)
    assert grid[0, 0, 2, 1] == 2 and grid[0, 1, 2, 1] == 1


def _smooth_velocity(shape, amplitude=1.5):
    coords = identity_grid(shape)
    velocity = torch.zeros(1, len(shape), *shape)
    for k in range(len(shape)):
        velocity[:, k] = amplitude * torch.sin(2 * math.pi * coords[:, (k + 1) % len(shape)] / shape[0])
    return velocity


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_exp_v_composed_with_exp_minus_v_is_near_identity(shape):
    velocity = _smooth_velocity(shape)
    forward = integrate_velocity(velocity, 7)
    backward = integrate_velocity(-velocity, 7)
    residual = compose(forward, backward)
    interior = tuple(slice(3, n - 3) for n in shape)
    assert forward.abs().max() > 1.0
    assert residual[(slice(None), slice(None)) + interior].abs().max() < 0.05


def test_zero_steps_uses_velocity_as_displacement():
    velocity = torch.randn(1, 2, 5, 5)
    assert torch.equal(integrate_velocity(velocity, 0), velocity)


def test_constant_velocity_integrates_to_the_same_translation():
    velocity = torch.full((1, 2, 12, 12), 1.25)
    displacement = integrate_velocity(velocity, 5)
    torch.testing.assert_close(displacement[..., 3:-3, 3:-3], velocity[..., 3:-3, 3:-3], atol=1e-5, rtol=0)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="displacement"):
        warp(torch.rand(1, 1, 5, 5), torch.zeros(1, 2, 5, 6))


def test_sample_at_points_interpolates_linearly():
    from hypermorph_spatially_adaptive.core.transform import sample_at_points
    shape = (6, 7, 8)
    coords = identity_grid(shape)[0]
    field = torch.stack([2 * coords[0] + coords[2], coords[1] - 3 * coords[2]])  # linear, so exact
    points = torch.tensor([[1.25, 2.5, 3.75], [4.0, 0.0, 6.5]])
    values = sample_at_points(field, points)
    expected = torch.stack([2 * points[:, 0] + points[:, 2], points[:, 1] - 3 * points[:, 2]], dim=1)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
