"""The spatial model's conditioning variants: tissue-wise kernels, parameter maps, and how they reach the voxels."""
import pytest
import torch
import torch.nn.functional as F

from hypermorph_spatially_adaptive import HyperVxmDense
from hypermorph_spatially_adaptive.core.regularizers import lame_maps
from hypermorph_spatially_adaptive.models.conditioning import (class_fractions, class_parameter_sets,
                                                               fraction_pyramid, parameter_maps)
from hypermorph_spatially_adaptive.models.hypernetwork import hyper_conv, tissue_conv
from hypermorph_spatially_adaptive.models.networks import spatial_from_global

TINY = dict(enc_features=(4, 8), dec_features=(8, 8, 4), hyper_layers=2, hyper_units=16)
CLASSES = ("background", "a", "b")


def _global(shape=(16, 16), seed=0):
    torch.manual_seed(seed)
    model = HyperVxmDense(shape, 2, **TINY, class_names=CLASSES)
    with torch.no_grad():
        model.flow.weight.normal_(0.0, 0.1)  # a visible velocity
    return model.eval()


def _labels(shape, batch=1, seed=0):
    return torch.randint(0, len(CLASSES), (batch, 1, *shape), generator=torch.Generator().manual_seed(seed))


def test_parameter_maps_equal_the_regularizer_lame_maps():
    hyper = torch.rand(2, 6)
    labels = _labels((5, 7), batch=2)
    maps = parameter_maps(hyper, labels, 3)
    lam, mu = lame_maps(labels, hyper[:, :3], hyper[:, 3:])
    assert torch.equal(maps, torch.cat([lam, mu], dim=1))


def test_class_parameter_sets_pair_each_class_lambda_with_its_mu():
    hyper = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    assert torch.equal(class_parameter_sets(hyper, 3), torch.tensor([[[0.1, 0.4], [0.2, 0.5], [0.3, 0.6]]]))


def test_fraction_pyramid_averages_the_one_hot_labels_and_sums_to_one():
    labels = _labels((8, 8), batch=2)
    pyramid = fraction_pyramid(class_fractions(labels, 3), 2)
    assert [tuple(level.shape[2:]) for level in pyramid] == [(8, 8), (4, 4), (2, 2)]
    for level in pyramid:
        torch.testing.assert_close(level.sum(1), torch.ones_like(level[:, 0]))
    torch.testing.assert_close(pyramid[2], F.avg_pool2d(class_fractions(labels, 3), 4))


def test_tissue_conv_applies_each_voxel_its_own_class_kernel():
    x = torch.randn(2, 3, 9, 10)
    weight, bias = torch.randn(2, 3, 4, 3, 3, 3), torch.randn(2, 3, 4)
    labels = _labels((9, 10), batch=2)
    out = tissue_conv(x, weight, bias, class_fractions(labels, 3), padding=1)
    expected = torch.zeros_like(out)
    for c in range(3):
        per_class = hyper_conv(x, weight[:, c], bias[:, c], padding=1)
        expected += per_class * (labels == c)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("conditioning", ["vector", "maps", "tissue"])
def test_a_warm_start_reproduces_the_global_model_for_class_constant_vectors(conditioning):
    global_model = _global()
    spatial = spatial_from_global(global_model, 3, conditioning=conditioning).eval()
    moving, fixed = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    lam_mu = torch.tensor([[0.2, 0.5], [0.7, 0.1]])
    with torch.no_grad():
        expected = global_model(moving, fixed, lam_mu).velocity
        got = spatial(moving, fixed, lam_mu.repeat_interleave(3, dim=1), _labels((16, 16), batch=2)).velocity
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # maps: a wider first conv sums differently
    assert spatial.config["conditioning"] == conditioning


def test_a_tissue_model_on_one_class_is_the_global_model_at_that_class_values():
    global_model = _global()
    spatial = spatial_from_global(global_model, 3, conditioning="tissue").eval()
    moving, fixed = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    only_b = torch.full((1, 1, 16, 16), 2)
    with torch.no_grad():
        got = spatial(moving, fixed, torch.tensor([[0.1, 0.9, 0.3, 0.2, 0.05, 0.6]]), only_b).velocity
        expected = global_model(moving, fixed, torch.tensor([[0.3, 0.6]])).velocity
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_tissue_kernels_keep_a_class_values_within_the_receptive_field_around_it():
    shape = (64, 64)
    global_model = _global(shape)
    moving, fixed = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    labels = torch.zeros(1, 1, *shape, dtype=torch.int64)
    labels[..., :8, :8] = 1  # class "a" in one corner only
    base = torch.tensor([[0.2, 0.2, 0.25, 0.3, 0.3, 0.3]])  # not class-constant: both calls blend
    raised = torch.tensor([[0.2, 0.7, 0.2, 0.3, 0.2, 0.3]])
    far = (..., slice(40, None), slice(40, None))
    for conditioning, changes_far in (("tissue", False), ("vector", True)):
        model = spatial_from_global(global_model, 3, conditioning=conditioning).eval()
        with torch.no_grad():
            difference = model(moving, fixed, raised, labels).velocity - model(moving, fixed, base, labels).velocity
        assert difference[..., :8, :8].abs().max() > 1e-4
        assert bool(difference[far].abs().max() > 0) == changes_far, conditioning


def test_labels_shared_by_the_batch_equal_labels_per_sample():
    spatial = spatial_from_global(_global(), 3, conditioning="tissue").eval()
    moving, fixed = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    hyper = torch.rand(3, 6) * 0.5
    labels = _labels((16, 16))
    with torch.no_grad():
        shared = spatial(moving, fixed, hyper, labels).velocity
        per_sample = spatial(moving, fixed, hyper, labels.expand(3, -1, -1, -1)).velocity
    torch.testing.assert_close(shared, per_sample)


@pytest.mark.parametrize("conditioning", ["maps", "tissue"])
def test_models_that_need_labels_refuse_calls_without_them_or_out_of_range(conditioning):
    spatial = spatial_from_global(_global(), 3, conditioning=conditioning)
    moving, fixed, hyper = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 6) * 0.5
    assert spatial.needs_labels
    with pytest.raises(ValueError, match="needs the fixed image's labels"):
        spatial(moving, fixed, hyper)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        spatial(moving, fixed, hyper, torch.full((1, 1, 16, 16), 3))
    with pytest.raises(ValueError, match="labels must have shape"):
        spatial(moving, fixed, hyper, torch.zeros(1, 1, 8, 16, dtype=torch.int64))


def test_conditioning_is_saved_and_a_file_without_it_loads_as_the_paper_variant(tmp_path):
    spatial = spatial_from_global(_global(), 3, conditioning="tissue").eval()
    spatial.save(tmp_path / "tissue.pt")
    loaded = HyperVxmDense.load(tmp_path / "tissue.pt").eval()
    moving, fixed, labels = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), _labels((16, 16))
    hyper = torch.tensor([[0.1, 0.5, 0.3, 0.2, 0.1, 0.6]])
    with torch.no_grad():
        assert torch.equal(loaded(moving, fixed, hyper, labels).velocity, spatial(moving, fixed, hyper, labels).velocity)
    payload = torch.load(tmp_path / "tissue.pt", weights_only=True)
    vector = spatial_from_global(_global(), 3)
    payload["model_config"] = {k: v for k, v in vector.config.items() if k != "conditioning"}
    payload["model_state"] = vector.state_dict()
    torch.save(payload, tmp_path / "old.pt")
    assert HyperVxmDense.load(tmp_path / "old.pt").conditioning == "vector"


def test_tissue_model_gradients_reach_the_hypernetwork():
    spatial = spatial_from_global(_global(), 3, conditioning="tissue")
    moving, fixed = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    output = spatial(moving, fixed, torch.rand(2, 6) * 0.5, _labels((16, 16), batch=2))
    (output.warped - fixed).square().mean().backward()
    assert spatial.hypernetwork.layers[0].weight.grad.abs().sum() > 0


def test_conditioning_other_than_vector_is_refused_for_a_global_model():
    with pytest.raises(ValueError, match="for spatial models"):
        HyperVxmDense((16, 16), 2, **TINY, conditioning="tissue")
    with pytest.raises(ValueError, match="conditioning must be one of"):
        HyperVxmDense((16, 16), 6, **TINY, class_names=CLASSES, conditioning="bogus")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("conditioning", ["maps", "tissue"])
def test_a_spatial_model_gives_the_same_field_on_cuda_and_trains_under_bf16_autocast(conditioning):
    spatial = spatial_from_global(_global(), 3, conditioning=conditioning).eval()
    moving, fixed = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    hyper, labels = torch.rand(2, 6) * 0.5, _labels((16, 16), batch=2)
    with torch.no_grad():
        expected = spatial(moving, fixed, hyper, labels).velocity
        got = spatial.cuda()(moving.cuda(), fixed.cuda(), hyper.cuda(), labels.cuda()).velocity.cpu()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
    spatial.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = spatial(moving.cuda(), fixed.cuda(), hyper.cuda(), labels.cuda())
    (output.warped.float() - fixed.cuda()).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in spatial.parameters() if p.grad is not None)
