import pytest
import torch

from hypermorph_spatially_adaptive.core.instance_optimisation import (check_levels, level_shape, optimise_velocity,
                                                                       resample_velocity)
from hypermorph_spatially_adaptive.core.objective import loss_terms
from hypermorph_spatially_adaptive.core.transform import integrate_velocity, warp


def _blob(shape, centre, width=0.15):
    axes = [torch.linspace(-1, 1, n) for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / width)[None, None]


def _objective(fixed, moving, velocity, lam, mu, spacing):
    warped = warp(moving, integrate_velocity(velocity))
    return float(loss_terms(fixed, warped, velocity, "elastic", lam, mu, spacing=spacing).total)


def test_optimisation_lowers_the_training_objective_on_a_tiny_pair():
    torch.manual_seed(0)
    fixed = _blob((16, 16), (0.0, 0.0))
    moving = _blob((16, 16), (0.2, -0.1))
    lam = torch.full((1, 1, 16, 16), 0.1)
    mu = torch.full((1, 1, 16, 16), 0.2)
    mu[..., :8] = 0.4  # voxelwise maps, two "tissues"
    start = 0.1 * torch.randn(1, 2, 16, 16)
    result = optimise_velocity(fixed, moving, lam, mu, spacing=(1.5, 2.0), velocity=start, steps=30, lr=0.05)
    before = _objective(fixed, moving, start, lam, mu, (1.5, 2.0))
    after = _objective(fixed, moving, result.velocity, lam, mu, (1.5, 2.0))
    assert after < 0.8 * before
    assert len(result.objective) == 30 and result.objective[0] == pytest.approx(before, rel=1e-5)
    assert torch.allclose(result.displacement, integrate_velocity(result.velocity))
    assert result.warped.shape == fixed.shape


def test_optimisation_is_reproducible():
    torch.manual_seed(1)
    fixed, moving = torch.rand(1, 1, 12, 10), torch.rand(1, 1, 12, 10)
    runs = [optimise_velocity(fixed, moving, 0.2, 0.2, spacing=(1.0, 1.0), steps=8, lr=0.05, levels=(2, 1))
            for _ in range(2)]
    assert torch.equal(runs[0].velocity, runs[1].velocity)
    assert runs[0].objective == runs[1].objective


@pytest.mark.parametrize("axis", [0, 1])
def test_a_known_shift_is_recovered_in_voxels_along_its_axis(axis):
    shape, spacing = (32, 32), (2.0, 3.0)
    shift = 2.0  # voxels: moving(x) = fixed(x - shift e_axis), so u = +shift e_axis
    centre = [0.0, 0.0]
    centre[axis] = shift * 2 / (shape[axis] - 1)
    fixed, moving = _blob(shape, (0.0, 0.0)), _blob(shape, centre)
    result = optimise_velocity(fixed, moving, 0.05, 0.05, spacing=spacing, steps=80, lr=0.1, levels=(2, 1))
    inside = result.displacement[0, :, 12:20, 12:20].mean(dim=(1, 2))
    assert inside[axis] == pytest.approx(shift, abs=0.25)
    assert abs(float(inside[1 - axis])) < 0.1


@pytest.mark.parametrize("shape, spacing", [((64, 64), (2.0, 2.0)), ((30, 22), (1.0, 2.5)),
                                            ((12, 10, 9), (1.0, 1.5, 2.0))])
def test_resampling_keeps_a_constant_field_in_mm(shape, spacing):
    mm = torch.tensor([1.5, -2.0, 0.7][:len(shape)])
    field = (mm / torch.tensor(spacing)).view(1, -1, *([1] * len(shape))).expand(2, -1, *shape).contiguous()
    coarse = level_shape(shape, 4)
    down = resample_velocity(field, coarse)
    coarse_spacing = torch.tensor([s * n / m for s, n, m in zip(spacing, shape, coarse)])
    assert torch.allclose(down * coarse_spacing.view(1, -1, *([1] * len(shape))),
                          mm.view(1, -1, *([1] * len(shape))).expand_as(down), atol=1e-5)
    up = resample_velocity(down, shape)
    assert torch.allclose(up, field, atol=1e-5)


def test_no_steps_integrates_the_start_and_levels_are_checked():
    fixed = torch.rand(1, 1, 8, 8)
    start = 0.3 * torch.ones(1, 2, 8, 8)
    result = optimise_velocity(fixed, fixed, 0.1, 0.1, velocity=start, steps=0)
    assert torch.equal(result.velocity, start) and result.objective == []
    for bad in [(), (2,), (1, 2), (2, 2, 1), (0, 1)]:
        with pytest.raises(ValueError, match="levels"):
            check_levels(bad)
    with pytest.raises(ValueError, match="velocity must have shape"):
        optimise_velocity(fixed, fixed, 0.1, 0.1, velocity=torch.zeros(1, 2, 4, 4))
