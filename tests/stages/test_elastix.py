import numpy as np
import pytest
import torch

from hypermorph_spatially_adaptive.stages.inference.elastix import ElastixSettings, field_to_voxels


def _texture(shape, shift=(0.0,) * 3):
    """A smooth texture (products of sinusoids, wavelengths 11-17 voxels) on a grid of ``shape``, displaced by
    ``shift`` voxels along each array axis: moving(x) = fixed(x - shift), so the field from fixed into moving is
    +shift."""
    axes = [torch.arange(n, dtype=torch.float32) - d for n, d in zip(shape, shift)]
    grids = torch.meshgrid(*axes, indexing="ij")
    waves = [torch.sin(2 * torch.pi * g / w + k) for k, (g, w) in enumerate(zip(grids, (13.0, 17.0, 11.0)))]
    image = 1.0 + torch.stack(waves).prod(0) + 0.5 * torch.sin(2 * torch.pi * sum(grids) / 15.0)
    return image / 2.5


def test_physical_field_becomes_voxels_along_the_array_axes():
    spacing = (2.0, 0.5)
    # itk.array_from_image order: [y, x, component]; component 0 is physical x = array axis 0
    field = np.zeros((3, 4, 2))
    field[..., 0], field[..., 1] = 4.0, -1.0
    voxels = field_to_voxels(field, spacing, np.eye(2))
    assert voxels.shape == (2, 4, 3)
    assert np.allclose(voxels[0], 2.0) and np.allclose(voxels[1], -2.0)
    flipped = field_to_voxels(field, spacing, np.diag([-1.0, 1.0]))  # an image whose x axis points the other way
    assert np.allclose(flipped[0], -2.0) and np.allclose(flipped[1], -2.0)


def test_settings_name_the_flag_of_a_bad_value():
    with pytest.raises(ValueError, match="--elastix-iterations"):
        ElastixSettings(iterations=0)
    with pytest.raises(ValueError, match="--elastix-bending-weight"):
        ElastixSettings(bending_weight=-1.0)


@pytest.mark.parametrize("shape, spacing, shift, iterations", [
    ((48, 40), (2.0, 3.0), (2.0, -1.5), 300),
    ((24, 20, 16), (1.0, 2.0, 1.5), (1.5, -1.0, 1.0), 150),
])
def test_elastix_recovers_a_known_translation_in_voxels_with_its_axes_and_sign(shape, spacing, shift, iterations):
    pytest.importorskip("itk")
    from hypermorph_spatially_adaptive.stages.inference.elastix import register_elastix

    fixed, moving = _texture(shape), _texture(shape, shift)
    settings = ElastixSettings(bending_weight=0.0, iterations=iterations, resolutions=2)
    displacement, seconds = register_elastix(fixed, moving, spacing, settings, threads=1)
    assert displacement.shape == (1, len(shape), *shape) and seconds > 0
    centre = tuple(slice(n // 3, n - n // 3) for n in shape)
    recovered = displacement[0][(slice(None), *centre)].mean(dim=tuple(range(1, len(shape) + 1)))
    assert torch.allclose(recovered, torch.tensor(shift[:len(shape)]), atol=0.3), recovered
