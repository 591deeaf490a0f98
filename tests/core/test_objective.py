"""The training objective: per-sample weighting, voxelwise maps from labels, and the parameter samplers."""
import pytest
import torch

from hypermorph_spatially_adaptive.core import regularizers
from hypermorph_spatially_adaptive.core.losses import ncc_loss
from hypermorph_spatially_adaptive.core.hyperparams import nb_hyp_params
from hypermorph_spatially_adaptive.core.objective import (constant_hyperparams, registration_loss,
                                                          sample_training_hyperparams)


def _batch(seed=0, shape=(12, 10)):
    torch.manual_seed(seed)
    fixed, warped = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    velocity = torch.randn(2, 2, *shape)
    labels = torch.randint(0, 3, (2, 1, *shape))
    return fixed, warped, velocity, labels


def test_global_loss_weights_each_sample_by_its_own_parameters():
    fixed, warped, velocity, _ = _batch()
    hyper = torch.tensor([[0.2, 0.3], [0.6, 0.1]])
    terms = registration_loss(fixed, warped, velocity, hyper, ncc_window=5, spacing=(1.5, 2.0))
    expected_sim = sum((1 - hyper[b].sum()) * ncc_loss(fixed[b:b + 1], warped[b:b + 1], window=5)
                       for b in range(2)) / 2
    expected_reg = sum(regularizers.elastic_energy(velocity[b:b + 1], float(hyper[b, 0]), float(hyper[b, 1]),
                                                   spacing=(1.5, 2.0)) for b in range(2)) / 2
    torch.testing.assert_close(terms.similarity, expected_sim, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms.regularization, expected_reg, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(terms.total, terms.similarity + terms.regularization)


def test_spatial_loss_with_class_constant_parameters_equals_the_global_loss():
    fixed, warped, velocity, labels = _batch(1)
    pair = torch.tensor([[0.3, 0.2], [0.1, 0.5]])
    spatial = registration_loss(fixed, warped, velocity, pair.repeat_interleave(3, dim=1), num_classes=3,
                                labels=labels, ncc_window=5)
    global_ = registration_loss(fixed, warped, velocity, pair, ncc_window=5)
    torch.testing.assert_close(spatial.total, global_.total, rtol=1e-5, atol=1e-7)


def test_spatial_loss_depends_on_the_class_under_each_voxel():
    fixed, warped, velocity, labels = _batch(2)
    stiff_class_1 = torch.tensor([[0.1, 0.9, 0.1, 0.0, 0.0, 0.0]] * 2)
    labels_without_1 = labels.clamp(max=0)
    with_class = registration_loss(fixed, warped, velocity, stiff_class_1, num_classes=3, labels=labels)
    without = registration_loss(fixed, warped, velocity, stiff_class_1, num_classes=3, labels=labels_without_1)
    assert with_class.regularization > 2 * without.regularization
    with pytest.raises(ValueError, match="labels"):
        registration_loss(fixed, warped, velocity, stiff_class_1, num_classes=3)


def test_diffusion_loss_is_one_minus_h_ncc_plus_h_diffusion():
    fixed, warped, velocity, _ = _batch(3)
    hyper = torch.tensor([[0.25], [0.25]])
    terms = registration_loss(fixed, warped, velocity, hyper, regularizer="diffusion", ncc_window=5)
    torch.testing.assert_close(terms.similarity, 0.75 * ncc_loss(fixed, warped, window=5), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms.regularization, regularizers.diffusion_energy(velocity, 0.25))


def test_parameter_vector_lengths_and_constant_layout():
    assert nb_hyp_params("elastic", 1) == 2 and nb_hyp_params("elastic", 4) == 8
    assert nb_hyp_params("diffusion", 4) == 4
    torch.testing.assert_close(constant_hyperparams((0.2, 0.3), 3, batch=2),
                               torch.tensor([[0.2, 0.2, 0.2, 0.3, 0.3, 0.3]] * 2))
    with pytest.raises(ValueError, match="regularizer"):
        nb_hyp_params("curvature", 1)


@pytest.mark.parametrize("class_sampling", ["independent", "mixed"])
def test_training_draws_stay_in_the_simplex(class_sampling):
    generator = torch.Generator().manual_seed(0)
    hyper = sample_training_hyperparams(4000, 5, "elastic", generator=generator, class_sampling=class_sampling)
    lam, mu = hyper[:, :5], hyper[:, 5:]
    assert hyper.shape == (4000, 10)
    assert (hyper >= 0).all() and (lam + mu <= 1 + 1e-6).all()


def test_mixed_sampling_covers_nearly_class_constant_vectors():
    def spread(class_sampling):
        generator = torch.Generator().manual_seed(0)
        hyper = sample_training_hyperparams(4000, 5, "elastic", generator=generator, class_sampling=class_sampling)
        return hyper[:, :5].std(dim=1)

    independent, mixed = spread("independent"), spread("mixed")
    assert (mixed < 0.05).float().mean() > 5 * (independent < 0.05).float().mean()
    assert mixed.max() > 0.3  # strongly different classes are still drawn
