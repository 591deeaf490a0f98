import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from hypermorph_spatially_adaptive.core import metrics as eval_metrics
from hypermorph_spatially_adaptive.core.metrics import (
    DiceScores,
    dice,
    folding_percent,
    hd95,
    hd95_per_class,
    jacobian_determinant,
    sdlogj,
    strain_magnitude,
    strain_tensor,
    tre,
    warp_image,
    warp_labels,
)
from hypermorph_spatially_adaptive.core.transform import identity_grid

NAN = float("nan")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------------- dice

# Fixed and warped 4x4 maps; class 3 appears in neither.
FIXED = torch.tensor([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 0, 0],
                      [2, 2, 0, 0]])
WARPED = torch.tensor([[0, 1, 1, 1],
                       [0, 0, 1, 0],
                       [2, 0, 0, 0],
                       [2, 2, 2, 2]])
# By hand: class 0 |F|=8 |W|=7 |F&W|=5 -> 10/15; class 1 4, 4, 3 -> 6/8; class 2 4, 5, 3 -> 6/9; class 3 absent.
EXPECTED_PER_CLASS = [2 / 3, 3 / 4, 2 / 3, NAN]
EXPECTED_MEAN = (3 / 4 + 2 / 3) / 2  # foreground classes 1 and 2; class 3 (NaN) is left out


def test_dice_of_hand_made_maps_matches_hand_computed_fractions():
    scores = dice(FIXED, WARPED, 4)
    assert isinstance(scores, DiceScores)
    assert scores.per_class.dtype == torch.float64 and scores.per_class.shape == (4,)
    torch.testing.assert_close(scores.per_class, torch.tensor(EXPECTED_PER_CLASS, dtype=torch.float64),
                               equal_nan=True)
    assert scores.mean.shape == () and scores.mean.item() == pytest.approx(EXPECTED_MEAN, abs=1e-12)


def test_dice_follows_the_order_of_listed_class_ids_and_ignores_unlisted_labels():
    per_class, mean = dice(FIXED.numpy(), WARPED.numpy(), [2, 0, 1])
    torch.testing.assert_close(per_class, torch.tensor([2 / 3, 2 / 3, 3 / 4], dtype=torch.float64))
    # Class 2 alone: its fixed voxels overlapping unlisted labels must not count as matches.
    per_class, mean = dice(FIXED, WARPED, [2])
    assert per_class.item() == pytest.approx(2 / 3) and mean.item() == pytest.approx(2 / 3)
    # Negative and out-of-range labels belong to no listed class, with ids 0..C-1 and with a list of ids.
    odd = WARPED.clone()
    odd[odd == 0] = -1  # negative label
    odd[odd == 2] = 7  # label above every listed id
    expected = torch.tensor([0.0, 3 / 4, 0.0], dtype=torch.float64)  # classes 0 and 2 vanished from the warped map
    torch.testing.assert_close(dice(FIXED, odd, 3).per_class, expected)
    torch.testing.assert_close(dice(FIXED, odd, [1, 0, 2]).per_class, expected[[1, 0, 2]])


def test_dice_of_a_class_absent_in_both_maps_is_nan_and_all_nan_mean_is_nan():
    per_class, mean = dice(torch.zeros(5, 5, dtype=torch.long), torch.zeros(5, 5, dtype=torch.long), 3)
    assert per_class[0].item() == 1.0 and torch.isnan(per_class[1:]).all() and torch.isnan(mean)


def test_dice_of_a_class_present_in_one_map_only_is_zero():
    fixed = torch.zeros(4, 4, dtype=torch.long)
    warped = fixed.clone()
    warped[0, 0] = 1
    per_class, mean = dice(fixed, warped, 2)
    assert per_class[1].item() == 0.0 and mean.item() == 0.0


def _loop_dice(fixed, warped, ids):
    out = []
    for k in ids:
        f, w = fixed == k, warped == k
        den = f.sum() + w.sum()
        out.append(NAN if den == 0 else 2.0 * (f & w).sum().item() / den.item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(12, 10), (6, 7, 5)])
def test_batched_dice_equals_unbatched_and_a_reference_loop(shape):
    fixed = torch.randint(0, 4, (5, 1, *shape))
    warped = torch.randint(0, 5, (5, 1, *shape))  # label 4 is unlisted
    per_class, mean = dice(fixed, warped, 4)
    assert per_class.shape == (5, 4) and mean.shape == (5,)
    for b in range(5):
        single = dice(fixed[b, 0], warped[b, 0], 4)
        torch.testing.assert_close(per_class[b], single.per_class, equal_nan=True)
        torch.testing.assert_close(mean[b], single.mean, equal_nan=True)
        torch.testing.assert_close(per_class[b], _loop_dice(fixed[b, 0], warped[b, 0], range(4)), equal_nan=True)


def test_dice_broadcasts_one_fixed_map_against_a_batch_of_warped_maps():
    fixed = torch.randint(0, 3, (1, 1, 9, 8))
    warped = torch.randint(0, 3, (6, 1, 9, 8))
    broadcast = dice(fixed, warped, 3)
    explicit = dice(fixed.expand(6, -1, -1, -1), warped, 3)
    torch.testing.assert_close(broadcast.per_class, explicit.per_class, equal_nan=True)
    torch.testing.assert_close(broadcast.mean, explicit.mean, equal_nan=True)
    flipped = dice(warped, fixed, 3)  # broadcasting works from either side; Dice is symmetric
    torch.testing.assert_close(flipped.per_class, explicit.per_class, equal_nan=True)


@pytest.mark.parametrize("fixed, warped, classes, match", [
    (torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long), 2, "fixed_labels must be an integer"),
    (torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long), 2, "spatial shape"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.zeros(3, 1, 4, 4, dtype=torch.long), 2, "batch sizes"),
    (torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), [1, 1], "distinct"),
    (torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), 0, "classes"),
])
def test_dice_rejects_bad_input(fixed, warped, classes, match):
    with pytest.raises(ValueError, match=match):
        dice(fixed, warped, classes)


# ----------------------------------------------------------------------------------------------------- hd95

def _square(shape, top, left, size):
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


@pytest.mark.parametrize("spacing, expected", [(None, 2.0), ((1.5, 0.5), 3.0), ((0.5, 4.0), 1.0)])
def test_hd95_of_a_square_shifted_by_two_voxels_is_two_spacings_along_the_shift(spacing, expected):
    # Every surface voxel has a partner 2 voxels along axis 0; the whole top/bottom rows are exactly that far.
    a = _square((20, 20), 4, 5, 8)
    b = _square((20, 20), 6, 5, 8)
    assert hd95(a, b, spacing) == pytest.approx(expected, abs=1e-12)
    assert hd95(torch.from_numpy(b), torch.from_numpy(a), spacing) == pytest.approx(expected, abs=1e-12)


def test_hd95_of_a_cube_shifted_in_3d_uses_the_spacing_of_the_shift_axis():
    a = np.zeros((12, 12, 12), dtype=np.uint8)
    a[3:9, 3:9, 3:9] = 1
    b = np.roll(a, 2, axis=2)
    assert hd95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(5.0, abs=1e-12)


def test_hd95_pools_both_directions_and_interpolates_the_percentile():
    # a = {(5, 5)}, b = {(5, 5), (5, 9)}: distances a->b [0], b->a [0, 4]; pooled [0, 0, 4]; the 95th percentile
    # sits at 0.95 * 2 = 1.9 -> 0 + 0.9 * 4 = 3.6 voxels, i.e. 1.8 mm with 0.5 mm along axis 1.
    a = np.zeros((12, 12), dtype=bool)
    a[5, 5] = True
    b = a.copy()
    b[5, 9] = True
    assert hd95(a, b) == pytest.approx(3.6, abs=1e-12)
    assert hd95(a, b, (3.0, 0.5)) == pytest.approx(1.8, abs=1e-12)


def test_hd95_ignores_a_single_outlier_that_the_hausdorff_distance_would_report():
    a = _square((40, 40), 5, 5, 10)
    b = a.copy()
    b[35, 35] = True  # 72 zero distances and one large one: the 95th percentile is 0
    assert hd95(a, b) == 0.0


def test_hd95_is_nan_for_two_empty_masks_and_inf_for_one():
    empty = np.zeros((8, 8), dtype=bool)
    full = _square((8, 8), 2, 2, 3)
    assert math.isnan(hd95(empty, empty))
    assert hd95(empty, full) == math.inf and hd95(full, empty) == math.inf


def test_hd95_per_class_returns_values_nan_and_inf_per_class():
    fixed = np.zeros((20, 20), dtype=np.int64)
    fixed[4:12, 5:13] = 1
    fixed[15:18, 15:18] = 2
    warped = np.zeros_like(fixed)
    warped[6:14, 5:13] = 1  # class 1 shifted by 2 along axis 0; class 2 lost; class 3 absent in both
    values = hd95_per_class(torch.from_numpy(fixed)[None, None], warped, [1, 2, 3], spacing=(2.0, 1.0))
    assert values.dtype == np.float64 and values.shape == (3,)
    assert values[0] == pytest.approx(4.0) and values[1] == math.inf and math.isnan(values[2])


# ----------------------------------------------------------------------------------------------------- tre

SPACING_3D = (1.5, 2.0, 3.0)


def test_tre_of_a_constant_shift_is_the_known_distance_in_mm_per_point():
    shape = (6, 7, 8)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    displacement = shift.view(3, 1, 1, 1).expand(3, *shape).clone()
    fixed = torch.tensor([[1.3, 2.7, 4.1], [0.0, 3.5, 6.25], [4.5, 5.0, 1.0]], dtype=torch.float64)
    # Residuals in voxels chosen so that the mm residuals are (3, 4, 0), (0, 0, 0) and (0, 0, 1.5).
    residual = torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    moving = fixed + shift - residual
    distances = tre(fixed, moving, displacement, SPACING_3D)
    assert distances.shape == (3,) and distances.dtype == torch.float64
    torch.testing.assert_close(distances, torch.tensor([5.0, 0.0, 1.5], dtype=torch.float64))
    # Batched field form and numpy inputs give the same per-point distances.
    again = tre(fixed.numpy(), moving.numpy(), displacement[None].float().numpy(), SPACING_3D)
    torch.testing.assert_close(again, distances, atol=1e-6, rtol=0)


def test_tre_interpolates_the_field_linearly_between_voxels():
    displacement = torch.zeros(3, 6, 7, 8)
    displacement[0, 2, 3, 4] = 1.0  # a single non-zero voxel: weights are the trilinear hat functions
    fixed = torch.tensor([[2.0, 3.25, 4.0], [2.5, 3.5, 4.0], [2.0, 3.0, 4.0], [4.0, 5.0, 6.0]])
    # u_0 at the points: 0.75, 0.5 * 0.5 = 0.25, 1, 0; moving == fixed, so TRE = u_0 * 1.5 mm.
    distances = tre(fixed, fixed, displacement, SPACING_3D)
    torch.testing.assert_close(distances, torch.tensor([1.125, 0.375, 1.5, 0.0], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_tre_mean_is_the_mean_distance_not_the_root_of_the_mean():
    displacement = torch.zeros(1, 2, 10, 10)
    fixed = torch.tensor([[2.0, 2.0], [5.0, 5.0]])
    moving = fixed + torch.tensor([[1.0, 0.0], [0.0, 9.0 / 2.0]])
    distances = tre(fixed, moving, displacement, (1.0, 2.0))
    assert distances.tolist() == pytest.approx([1.0, 9.0]) and distances.mean().item() == pytest.approx(5.0)


def test_tre_rejects_mismatched_keypoints_and_fields():
    with pytest.raises(ValueError, match="moving_keypoints"):
        tre(torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="displacement"):
        tre(torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(2, 5, 5))


# ----------------------------------------------------------------------------------------------------- jacobian

def _linear_field(matrix, shape):
    """u(x) = A x on a grid of ``shape``: ``[1, ndim, *S]`` float64."""
    coords = identity_grid(shape, dtype=torch.float64)[0]
    return torch.einsum("ka,a...->k...", matrix, coords)[None]


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_linear_field_has_determinant_det_of_identity_plus_a_everywhere(shape):
    ndim = len(shape)
    matrix = 0.3 * torch.randn(ndim, ndim, dtype=torch.float64)
    det = jacobian_determinant(_linear_field(matrix, shape))
    assert det.shape == (1, *shape) and det.dtype == torch.float64
    expected = torch.linalg.det(torch.eye(ndim, dtype=torch.float64) + matrix)
    torch.testing.assert_close(det, expected.expand_as(det))  # borders included: one-sided differences are exact


@pytest.mark.parametrize("shape", [(8, 9), (5, 6, 7)])
def test_jacobian_determinant_matches_numpy_gradient_and_ignores_spacing(shape):
    ndim = len(shape)
    u = torch.randn(2, ndim, *shape, dtype=torch.float64)
    det = jacobian_determinant(u)
    for b in range(2):
        grads = np.stack([np.stack(np.gradient(u[b, k].numpy()), 0) for k in range(ndim)], 0)  # [k, a, *S]
        jac = np.moveaxis(grads, (0, 1), (-2, -1)) + np.eye(ndim)
        np.testing.assert_allclose(det[b].numpy(), np.linalg.det(jac), atol=1e-10)
    spacing = SPACING_3D[:ndim]
    torch.testing.assert_close(jacobian_determinant(u, spacing), det)
    torch.testing.assert_close(jacobian_determinant(u[0].numpy(), spacing), det[0])


# ----------------------------------------------------------------------------------------------------- strain

@pytest.mark.parametrize("shape, spacing", [((7, 9), (1.0, 1.0)), ((7, 9), (2.0, 0.5)), ((5, 6, 7), (1.5, 1.0, 3.0))])
def test_linear_field_has_its_symmetric_gradient_in_mm_everywhere(shape, spacing):
    ndim = len(shape)
    matrix = 0.3 * torch.randn(ndim, ndim, dtype=torch.float64)
    eps = strain_tensor(_linear_field(matrix, shape), spacing)
    # u_k = A_ka x_a in voxels: d(s_k u_k) / d(s_a x_a) = s_k A_ka / s_a
    s = torch.tensor(spacing, dtype=torch.float64)
    gradient = s[:, None] * matrix / s[None, :]
    expected = 0.5 * (gradient + gradient.T)
    assert eps.shape == (1, ndim, ndim, *shape)
    torch.testing.assert_close(eps[0].movedim((0, 1), (-2, -1)), expected.expand(*shape, ndim, ndim))
    torch.testing.assert_close(strain_magnitude(_linear_field(matrix, shape), spacing)[0],
                               expected.norm().expand(shape))


@pytest.mark.parametrize("ndim", [2, 3])
def test_translation_and_infinitesimal_rotation_have_no_strain(ndim):
    shape = (6, 7, 8)[:ndim]
    skew = torch.zeros(ndim, ndim, dtype=torch.float64)
    skew[0, 1], skew[1, 0] = 0.2, -0.2
    field = _linear_field(skew, shape) + 1.7  # grad u antisymmetric, plus a shift
    torch.testing.assert_close(strain_magnitude(field), torch.zeros(1, *shape, dtype=torch.float64))
    assert strain_tensor(field[0]).shape == (ndim, ndim, *shape)


@pytest.mark.parametrize("ndim", [2, 3])
def test_uniform_scaling_has_determinant_s_to_the_ndim_and_zero_sdlogj(ndim):
    shape = (6, 7, 8)[:ndim]
    s = 1.3
    u = _linear_field((s - 1.0) * torch.eye(ndim, dtype=torch.float64), shape)
    torch.testing.assert_close(jacobian_determinant(u[0]), torch.full(shape, s ** ndim, dtype=torch.float64))
    assert sdlogj(u[0]) == pytest.approx(0.0, abs=1e-12)
    assert folding_percent(u[0]) == 0.0


def _column_field(factors, rows, ndim):
    """u_0(x) = c(x_1) x_0, other channels 0: det J = 1 + c(x_1) exactly, borders included."""
    factors = torch.tensor(factors, dtype=torch.float64)
    shape = (rows, factors.numel()) + ((5,) if ndim == 3 else ())
    coords = identity_grid(shape, dtype=torch.float64)[0]
    u = torch.zeros(ndim, *shape, dtype=torch.float64)
    u[0] = coords[0] * factors.view(-1, *([1] * (ndim - 2)))
    return u


@pytest.mark.parametrize("ndim", [2, 3])
def test_folding_percent_counts_the_hand_computed_share_of_folded_columns(ndim):
    # 3 of 8 columns have u_0 = -2 x_0 (det -1), one has u_0 = -x_0 (det 0, also a fold), 4 are unchanged.
    u = _column_field([-2, -2, -2, -1, 0, 0, 0, 0], 6, ndim)
    assert folding_percent(u) == pytest.approx(100 * 4 / 8)
    mask = torch.zeros(u.shape[1:], dtype=torch.bool)
    mask[:, 2:6] = True  # columns 2..5: one det -1, one det 0, two det 1
    assert folding_percent(u, mask) == pytest.approx(50.0)
    assert folding_percent(u, mask, spacing=SPACING_3D[:ndim]) == pytest.approx(50.0)


def test_sdlogj_sees_folds_and_the_learn2reg_variant_does_not():
    # Columns alternate det -1 and det 2 (u_0 = -2 x_0 or x_0). 10 columns so that the Learn2Reg crop of two
    # voxels per side keeps columns 2..7: still half and half. For a half/half two-valued set std = |x - y| / 2.
    u = _column_field([-2, 1] * 5, 9, 2)
    assert sdlogj(u) == pytest.approx((math.log(2.0) - math.log(1e-9)) / 2, rel=1e-9)
    assert sdlogj(u, learn2reg=True) == pytest.approx((math.log(5.0) - math.log(2.0)) / 2, rel=1e-9)
    # Inside a mask on the unfolded columns only, both variants are 0.
    mask = torch.zeros(9, 10, dtype=torch.bool)
    mask[:, 1::2] = True
    assert sdlogj(u, mask) == pytest.approx(0.0, abs=1e-12)
    assert sdlogj(u, mask, learn2reg=True) == pytest.approx(0.0, abs=1e-12)


def test_learn2reg_variant_drops_a_two_voxel_border():
    # Only the first two columns are folded (det -1): the Learn2Reg variant crops them away entirely.
    u = _column_field([-2, -2, 0, 0, 0, 0, 0, 0], 8, 3)
    assert sdlogj(u) > 1.0
    assert sdlogj(u, learn2reg=True) == pytest.approx(0.0, abs=1e-12)


def test_learn2reg_variant_equals_the_evaluators_recipe_on_a_random_field():
    # The evaluator's recipe, written independently: zero-padded central differences [-1/2, 0, 1/2] along each
    # axis, det(I + grad u), crop 2 voxels per side, log(clip(det + 3, 1e-9, 1e9)), numpy std.
    u = 0.8 * torch.randn(3, 9, 10, 11, dtype=torch.float64)
    grads = np.stack([np.stack([ndi.correlate1d(u[k].numpy(), [-0.5, 0.0, 0.5], axis=a, mode="constant")
                                for a in range(3)]) for k in range(3)])  # [k, a, *S]
    jac = np.moveaxis(grads, (0, 1), (-2, -1)) + np.eye(3)
    det = np.linalg.det(jac)[2:-2, 2:-2, 2:-2]
    mask = np.random.default_rng(0).random((9, 10, 11)) > 0.4
    for m in (None, mask):
        inside = np.ones(det.shape, bool) if m is None else m[2:-2, 2:-2, 2:-2]
        expected = np.log(np.clip(det + 3, 1e-9, 1e9))[inside].std()
        assert sdlogj(u, m, learn2reg=True) == pytest.approx(expected, rel=1e-10)


def test_batched_regularity_metrics_equal_per_sample_values():
    u = torch.stack([_column_field([-2, 1, 0, 0.5, 1, -1, 0], 8, 3), 0.2 * torch.randn(3, 8, 7, 5,
                                                                                        dtype=torch.float64)])
    mask = torch.rand(2, 1, 8, 7, 5) > 0.3
    batched_sd, batched_fold = sdlogj(u, mask), folding_percent(u, mask)
    assert batched_sd.shape == (2,) and batched_fold.shape == (2,)
    for b in range(2):
        assert batched_sd[b].item() == pytest.approx(sdlogj(u[b], mask[b, 0]), rel=1e-12)
        assert batched_fold[b].item() == pytest.approx(folding_percent(u[b], mask[b, 0]), rel=1e-12)
    assert math.isnan(folding_percent(u[0], torch.zeros(8, 7, 5)))


@pytest.mark.parametrize("field, kwargs, match", [
    (torch.zeros(2, 4, 5, 5), {}, "displacement"),
    (torch.zeros(2, 5, 1), {}, "displacement"),
    (torch.zeros(2, 5, 5), {"spacing": (1.0,)}, "spacing"),
])
def test_jacobian_determinant_rejects_bad_fields(field, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jacobian_determinant(field, **kwargs)


def test_sdlogj_rejects_a_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match="mask"):
        sdlogj(torch.zeros(2, 5, 5), mask=torch.ones(5, 6))


# ----------------------------------------------------------------------------------------------------- warping

@pytest.mark.parametrize("labels", [
    np.random.default_rng(0).integers(0, 4, (7, 8)).astype(np.int32),
    np.random.default_rng(1).integers(0, 4, (7, 8)).astype(np.uint8),
    torch.randint(0, 4, (7, 8), generator=torch.Generator().manual_seed(2)),
    torch.randint(0, 4, (7, 8), dtype=torch.int16, generator=torch.Generator().manual_seed(3)),
])
def test_warp_labels_with_zero_field_returns_the_input_with_its_type_and_dtype(labels):
    zero = np.zeros((2, 7, 8), dtype=np.float32) if isinstance(labels, np.ndarray) else torch.zeros(2, 7, 8)
    out = warp_labels(labels, zero)
    assert type(out) is type(labels) and out.dtype == labels.dtype and out.shape == labels.shape
    assert (out == labels).all()


@pytest.mark.parametrize("image", [
    np.random.default_rng(0).random((2, 1, 6, 7, 5)).astype(np.float32),
    np.random.default_rng(1).random((6, 7, 5)),  # float64
    torch.rand(2, 1, 6, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)),
    torch.rand(6, 7, 5, generator=torch.Generator().manual_seed(5)),
])
def test_warp_image_with_zero_field_returns_the_input_with_its_type_and_dtype(image):
    spatial = image.shape[-3:]
    zero = torch.zeros((2, 3) + tuple(spatial)) if image.ndim == 5 else np.zeros((3,) + tuple(spatial))
    out = warp_image(image, zero)
    assert type(out) is type(image) and out.dtype == image.dtype and out.shape == image.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(image), atol=1e-6)


def test_integer_shift_moves_labels_and_half_shift_interpolates_images():
    labels = np.zeros((6, 9), dtype=np.int64)
    labels[2:4, 3:5] = 2
    shift = np.zeros((2, 6, 9))
    shift[1] = -2.0  # warped(x) = labels(x - 2 e_1): the block moves 2 voxels towards larger indices on axis 1
    expected = np.zeros_like(labels)
    expected[2:4, 5:7] = 2
    np.testing.assert_array_equal(warp_labels(labels, shift), expected)
    image = torch.arange(9, dtype=torch.float32).expand(1, 1, 6, 9)
    half = torch.zeros(1, 2, 6, 9)
    half[:, 1] = 0.5
    torch.testing.assert_close(warp_image(image, half)[..., :-1], image[..., :-1] + 0.5)


def test_warp_rejects_a_field_that_does_not_match_the_image():
    with pytest.raises(ValueError, match="displacement"):
        warp_image(torch.rand(6, 7), torch.zeros(1, 2, 6, 7, 3))
    with pytest.raises(ValueError, match="displacement"):
        warp_labels(np.zeros((6, 7), dtype=np.int64), np.zeros((3, 6, 7)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_stay_on_the_inputs_device():
    device = torch.device("cuda")
    labels = torch.randint(0, 3, (4, 1, 8, 9), device=device)
    assert dice(labels[:1], labels, 3).per_class.device.type == "cuda"
    field = 0.3 * torch.randn(2, 2, 8, 9, device=device)
    assert jacobian_determinant(field).device.type == "cuda" and sdlogj(field).device.type == "cuda"
    assert tre(torch.ones(3, 2), torch.ones(3, 2), field[:1]).device.type == "cuda"
    cpu = sdlogj(field.cpu())
    torch.testing.assert_close(sdlogj(field).cpu(), cpu, atol=1e-5, rtol=1e-5)
    assert warp_labels(labels, field[:1].expand(4, -1, -1, -1)).device.type == "cuda"


def test_statistics_from_a_precomputed_determinant_equal_the_field_versions():
    torch.manual_seed(0)
    field = 0.8 * torch.randn(2, 2, 12, 10)
    det = eval_metrics.jacobian_determinant(field)
    mask = torch.zeros(12, 10)
    mask[2:9, 3:8] = 1
    torch.testing.assert_close(eval_metrics.determinant_sdlogj(det, mask), eval_metrics.sdlogj(field, mask))
    folding = eval_metrics.determinant_folding_percent(det)
    torch.testing.assert_close(folding, eval_metrics.folding_percent(field))
    assert (folding > 0).all()  # a rough random field folds somewhere: the comparison is not 0 == 0
