import itertools

import pytest
import torch

from hypermorph_spatially_adaptive.core.losses import MSE, NCC, local_ncc, mse_loss, ncc_loss


def _images(shape, batch=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, *shape, generator=g, dtype=dtype),
            torch.rand(batch, 1, *shape, generator=g, dtype=dtype))


def _reference_cc(fixed, warped, window, eps):
    """Brute force: statistics over the in-image voxels of each window, straight from the definition."""
    shape = fixed.shape[2:]
    r = window // 2
    out = torch.empty_like(fixed)
    for b in range(fixed.shape[0]):
        for centre in itertools.product(*(range(n) for n in shape)):
            box = tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, n in zip(centre, shape))
            i = fixed[(b, 0) + box].flatten()
            j = warped[(b, 0) + box].flatten()
            cov = ((i - i.mean()) * (j - j.mean())).mean()
            var_i, var_j = ((i - i.mean()) ** 2).mean(), ((j - j.mean()) ** 2).mean()
            out[(b, 0) + centre] = min(1.0, (cov + eps) ** 2 / ((var_i + eps) * (var_j + eps)))
    return out


@pytest.mark.parametrize("shape, window", [((6, 7), 3), ((5, 6), 5), ((4, 5, 3), 3), ((4, 5, 3), 9)])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_local_ncc_matches_a_brute_force_window_computation(shape, window, eps):
    fixed, warped = _images(shape, dtype=torch.float64)
    warped = 0.6 * fixed + 0.4 * warped  # partly correlated: cc spread over (0, 1)
    expected = _reference_cc(fixed, warped, window, eps)
    torch.testing.assert_close(local_ncc(fixed, warped, window, eps), expected, atol=1e-9, rtol=1e-7)
    assert 0.05 < expected.min() and expected.max() < 0.999


@pytest.mark.parametrize("shape", [(24, 20), (10, 12, 8)])
def test_an_image_against_itself_is_the_optimum(shape):
    fixed, other = _images(shape)
    fixed[..., :4] = 0.25  # a flat band: still a perfect match
    self_loss = ncc_loss(fixed, fixed)
    assert self_loss.abs().item() < 1e-6
    assert ncc_loss(fixed, other).item() > self_loss.item() + 0.5
    assert ncc_loss(fixed, 0.5 * fixed + 0.5 * other).item() > self_loss.item()


def test_ncc_ignores_a_positive_affine_intensity_change():
    fixed, _ = _images((20, 20))
    # exact up to eps / var (eps = 1e-5, window variances of U(0, 1) noise ~ 0.08)
    assert ncc_loss(fixed, 3.0 * fixed - 7.0).item() < 1e-3
    # squared correlation: an inverted image also correlates perfectly
    assert ncc_loss(fixed, -fixed).item() < 1e-3
    assert ncc_loss(fixed, _images((20, 20), seed=4)[0]).item() > 0.5


def test_flat_windows_match_in_both_and_do_not_match_against_texture():
    flat = torch.full((1, 1, 12, 12), 0.3)
    textured, _ = _images((12, 12), batch=1)
    assert local_ncc(flat, flat + 0.2, 3).min() == 1.0
    # flat against textured: cc = eps / (var + eps) with eps = 1e-5 and 3x3 window variances >= ~0.01
    assert local_ncc(flat, textured, 3).max() < 1e-2
    assert local_ncc(textured, flat, 3).max() < 1e-2
    # a flattened warped image is never better than a textured mismatch
    _, other = _images((12, 12), batch=1, seed=5)
    assert ncc_loss(textured, flat, 3) > ncc_loss(textured, other, 3)


def test_ncc_loss_lies_in_unit_range_and_is_differentiable():
    fixed, warped = _images((6, 6), batch=1, dtype=torch.float64)
    values = ncc_loss(fixed, warped, 3, reduction="none")
    assert values.min() >= 0 and values.max() <= 1
    warped.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: ncc_loss(fixed, w, 3), (warped,))


def test_zero_weight_region_does_not_contribute():
    fixed, warped = _images((16, 16))
    weight = torch.ones(2, 1, 16, 16)
    weight[..., :8] = 0.0
    loss = ncc_loss(fixed, warped, 5, weight=weight, reduction="sum")
    plain = ncc_loss(fixed, warped, 5, reduction="none")
    torch.testing.assert_close(loss, plain[..., 8:].sum())
    # changing the image where the weight is 0 leaves the loss unchanged, except through windows that straddle
    warped2 = warped.clone()
    warped2[..., :4] = torch.rand(2, 1, 16, 4)
    torch.testing.assert_close(ncc_loss(fixed, warped2, 5, weight=weight, reduction="sum"), loss)


def test_weight_scales_each_voxel_contribution():
    fixed, warped = _images((12, 12))
    weight = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    plain = ncc_loss(fixed, warped, 3, reduction="none")
    torch.testing.assert_close(ncc_loss(fixed, warped, 3, weight=weight, reduction="none"), plain * weight)
    torch.testing.assert_close(ncc_loss(fixed, warped, 3, weight=0.25), 0.25 * plain.mean())


def test_per_sample_weights_apply_per_sample():
    fixed, warped = _images((12, 12), batch=2)
    loss = ncc_loss(fixed, warped, 3, weight=torch.tensor([0.0, 1.0]))
    second = ncc_loss(fixed[1:], warped[1:], 3)
    # the mean runs over both samples' voxels, the first contributes nothing
    torch.testing.assert_close(loss, 0.5 * second)
    loss = mse_loss(fixed, warped, weight=torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(loss, mse_loss(fixed[:1], warped[:1]))


def test_mask_mean_runs_over_masked_voxels_only():
    fixed, warped = _images((10, 10))
    mask = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    mask[0, 0, 2:5, 3:9] = True
    mask[1, 0, 7:, :] = True
    plain = ncc_loss(fixed, warped, 3, reduction="none")
    torch.testing.assert_close(ncc_loss(fixed, warped, 3, mask=mask), plain[mask].mean())
    torch.testing.assert_close(ncc_loss(fixed, warped, 3, mask=mask, reduction="sum"), plain[mask].sum())
    masked_map = ncc_loss(fixed, warped, 3, mask=mask, reduction="none")
    assert torch.equal(masked_map[~mask], torch.zeros(int((~mask).sum())))
    # a batch-1 mask is shared by all samples
    shared = mask[:1]
    expected = plain[shared.expand(2, -1, -1, -1)].mean()
    torch.testing.assert_close(ncc_loss(fixed, warped, 3, mask=shared), expected)


def test_mask_and_weight_combine_and_an_empty_mask_gives_zero():
    fixed, warped = _images((8, 8))
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1.0
    expected = 0.5 * ((fixed - warped) ** 2)[:, :, :4].mean()
    torch.testing.assert_close(mse_loss(fixed, warped, weight=0.5, mask=mask), expected)
    empty = mse_loss(fixed, warped, mask=torch.zeros(2, 1, 8, 8))
    assert empty.item() == 0.0


def test_mse_on_hand_computed_values():
    fixed = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    warped = torch.tensor([[[[1.0, 0.0], [4.0, 6.0]]]])
    # squared differences 0, 4, 1, 4
    assert mse_loss(fixed, warped).item() == pytest.approx(9 / 4)
    assert mse_loss(fixed, warped, reduction="sum").item() == pytest.approx(9.0)
    assert mse_loss(fixed, warped, reduction="none").flatten().tolist() == [0.0, 4.0, 1.0, 4.0]


def test_modules_hold_settings_and_match_the_functions():
    fixed, warped = _images((3, 4, 5), dtype=torch.float32)[0], _images((3, 4, 5), seed=1)[0]
    torch.testing.assert_close(NCC(window=3, reduction="sum")(fixed, warped), ncc_loss(fixed, warped, 3,
                                                                                      reduction="sum"))
    torch.testing.assert_close(MSE()(fixed, warped, weight=0.5), mse_loss(fixed, warped, weight=0.5))


@pytest.mark.parametrize("call, match", [
    (lambda f, w: ncc_loss(f, w, window=4), "window"),
    (lambda f, w: ncc_loss(f, w[..., :7]), "fixed and warped must have the same shape"),
    (lambda f, w: ncc_loss(f, torch.cat([w, w], 1)), "warped must have 1 channel"),
    (lambda f, w: ncc_loss(f, w, reduction="median"), "reduction"),
    (lambda f, w: ncc_loss(f, w, weight=torch.ones(3)), "weight"),
    (lambda f, w: ncc_loss(f, w, weight=-1.0), "weight"),
    (lambda f, w: ncc_loss(f, w, mask=torch.ones(2, 1, 8, 7)), "mask must have shape"),
    (lambda f, w: mse_loss(f * float("nan"), w), "fixed contains NaN"),
    (lambda f, w: NCC(window=0), "window"),
    (lambda f, w: MSE(reduction="avg"), "reduction"),
])
def test_bad_arguments_raise_value_errors(call, match):
    fixed, warped = _images((8, 8))
    with pytest.raises(ValueError, match=match):
        call(fixed, warped)
