"""pair_metrics: the scores every stage reports for one registered pair, checked by hand on tiny items."""
import math

import pytest
import torch

from hypermorph_spatially_adaptive.core import metrics as eval_metrics
from hypermorph_spatially_adaptive.evaluation.pair_metrics import (class_end_point_error, class_means, class_strain,
                                                                   class_tre, end_point_error, nanmean, pair_metrics,
                                                                   tissue_columns, tissue_metrics)

CLASSES = ("background", "a", "b")


def _item(shift_rows: int = 1):
    fixed_labels = torch.zeros(1, 8, 8, dtype=torch.int64)
    fixed_labels[0, 2:5, 2:5] = 1
    fixed_labels[0, 5:7, 5:7] = 2
    moving_labels = torch.roll(fixed_labels, shifts=shift_rows, dims=1)  # content moved down by shift_rows
    return {"fixed": torch.rand(1, 8, 8), "moving": torch.rand(1, 8, 8), "fixed_labels": fixed_labels,
            "moving_labels": moving_labels, "spacing": torch.tensor([2.0, 0.5], dtype=torch.float64),
            "fixed_keypoints": torch.tensor([[3.0, 3.0], [4.0, 2.0]]),
            "moving_keypoints": torch.tensor([[4.0, 3.0], [5.0, 2.0]]),
            "gt_displacement": torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])}


def test_the_true_shift_scores_perfectly_and_zero_scores_by_hand():
    item = _item()
    truth = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])  # u = +1 row: fixed x -> moving x + (1, 0)
    perfect = pair_metrics(truth, item, CLASSES)
    assert perfect["dice_a"] == pytest.approx(1.0) and perfect["tre_mm"] == pytest.approx(0.0)
    assert perfect["epe_mm"] == pytest.approx(0.0) and perfect["folding_percent"] == 0.0
    none = pair_metrics(torch.zeros(2, 8, 8), item, CLASSES, hd95=True)
    assert none["dice_a"] == pytest.approx(2 * 6 / (9 + 9))  # 3x3 square shifted by one row: 6 voxels overlap
    assert none["dice_b"] == pytest.approx(2 * 2 / (4 + 4))
    assert none["dice_mean"] == pytest.approx((none["dice_a"] + none["dice_b"]) / 2)
    assert none["tre_mm"] == pytest.approx(2.0)  # one row of 2 mm for every keypoint
    assert none["epe_mm"] == pytest.approx(2.0)
    assert none["hd95_mm"] == pytest.approx(2.0)


def test_precomputed_jacobian_and_warped_labels_give_the_same_scores():
    item = _item()
    field = 0.3 * torch.randn(2, 8, 8)
    expected = pair_metrics(field, item, CLASSES)
    given = pair_metrics(field, item, CLASSES, jacobian=eval_metrics.jacobian_determinant(field),
                         warped_labels=eval_metrics.warp_labels(item["moving_labels"][None], field[None])[0, 0])
    assert given == pytest.approx(expected, nan_ok=True)


def test_missing_inputs_give_nan_not_errors():
    item = {"fixed": torch.rand(1, 8, 8), "moving": torch.rand(1, 8, 8), "spacing": torch.tensor([1.0, 1.0])}
    metrics = pair_metrics(torch.zeros(2, 8, 8), item, CLASSES, hd95=True)
    assert math.isnan(metrics["dice_mean"]) and math.isnan(metrics["tre_mm"]) and math.isnan(metrics["hd95_mm"])
    assert "epe_mm" not in metrics and metrics["sdlogj"] == pytest.approx(0.0)


def test_end_point_error_is_in_mm_and_respects_the_mask():
    field = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    truth = torch.zeros(2, 4, 4)
    assert end_point_error(field, truth, (3.0, 1.0)) == pytest.approx(3.0)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    assert end_point_error(field * torch.arange(16.0).view(4, 4), truth, (1.0, 1.0), mask) == pytest.approx(0.0)
    assert math.isnan(nanmean([float("nan")])) and nanmean([1.0, float("nan"), 3.0]) == 2.0


# --------------------------------------------------------------------------------------------- per tissue

def test_per_class_tre_groups_keypoints_by_the_fixed_label_hand_computed():
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    # Rounded to the nearest voxel: (0.6, 1.6) -> (1, 2) is class 1 (flooring would give class 0); (3.4, 3.6) -> (3, 4)
    # is clamped to (3, 3).
    fixed = torch.tensor([[0.0, 0.0], [0.6, 1.6], [3.0, 1.0], [2.2, 3.4], [3.4, 3.6]])  # classes 0, 1, 2, 2, 2
    moving = fixed + torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    fields = torch.zeros(2, 2, 4, 4)
    fields[1, 0] = 1.0  # field 1 moves every point one voxel along axis 0
    tre = class_tre(fields, fixed, moving, labels, (2.0, 1.0), num_classes=4)
    # Spacing (2, 1) mm: a one-voxel miss along axis 0 is 2 mm, (1, 1) voxels is sqrt(5) mm; class 3 has no point.
    expected = torch.tensor([[2.0, 2.0, (math.sqrt(5) + 2 + 2) / 3, math.nan], [0.0, 0.0, 1 / 3, math.nan]],
                            dtype=torch.float64)
    torch.testing.assert_close(tre, expected, equal_nan=True)


def test_per_class_tre_of_a_single_class_is_the_plain_tre():
    generator = torch.Generator().manual_seed(0)
    field = torch.randn(1, 2, 8, 8, generator=generator)
    fixed = torch.rand(6, 2, generator=generator) * 7
    moving = torch.rand(6, 2, generator=generator) * 7
    tre = class_tre(field, fixed, moving, torch.zeros(8, 8, dtype=torch.long), (1.5, 0.5), num_classes=2)
    assert tre[0, 0].item() == pytest.approx(eval_metrics.tre(fixed, moving, field[0], (1.5, 0.5)).mean().item())
    assert math.isnan(tre[0, 1])


def test_class_means_average_each_class_and_leave_an_absent_class_nan():
    labels = torch.tensor([[0, 1], [1, 1]])
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 6.0], [0.0, 0.0]]])  # two maps [G=2, 2, 2]
    means = class_means(values, labels, num_classes=3)
    torch.testing.assert_close(means, torch.tensor([[1.0, 3.0, math.nan], [0.0, 2.0, math.nan]],
                                                   dtype=torch.float64), equal_nan=True)
    with pytest.raises(ValueError, match="must lie in 0..0"):
        class_means(values, labels, num_classes=1)
    with pytest.raises(ValueError, match="integer"):
        class_means(values, labels.float(), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        class_means(values[0], labels, num_classes=3)


def test_class_end_point_error_of_a_known_error_per_class_in_mm():
    labels = torch.zeros(4, 6, dtype=torch.long)
    labels[:, 2:4], labels[:, 4:] = 1, 2
    truth = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    error = torch.zeros(2, 4, 6)
    error[0, :, 2:4] = 1.0  # class 1: one voxel along axis 0 = 2 mm
    error[1, :, 4:] = 2.0  # class 2: two voxels along axis 1 = 1 mm
    fields = torch.stack([truth + error, truth])  # G = 2: the erroneous field and the true one
    epe = class_end_point_error(fields, truth, (2.0, 0.5), labels, num_classes=4)
    expected = torch.tensor([[0.0, 2.0, 1.0, math.nan], [0.0, 0.0, 0.0, math.nan]], dtype=torch.float64)
    torch.testing.assert_close(epe, expected, atol=1e-6, rtol=0, equal_nan=True)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5), (1.5, 1.0, 3.0)])
def test_class_strain_of_a_linear_shear_is_known_in_every_class(spacing):
    # u_0 = b x_1 in voxels: in mm d u_0 / d x_1 = s_0 b / s_1, so eps_01 = eps_10 = s_0 b / (2 s_1) and
    # |eps| = s_0 b / (sqrt(2) s_1) at every voxel (a linear field has its exact strain, borders included).
    shape, b = (5, 6, 4)[:len(spacing)], 0.1
    field = torch.zeros(len(spacing), *shape, dtype=torch.float64)
    field[0] = b * torch.arange(shape[1], dtype=torch.float64).view(1, -1, *([1] * (len(shape) - 2)))
    labels = torch.zeros(shape, dtype=torch.long)
    labels[2:] = 1
    strain = class_strain(torch.stack([field, torch.zeros_like(field)]), spacing, labels, num_classes=3)
    value = spacing[0] * b / (math.sqrt(2) * spacing[1])
    expected = torch.tensor([[value, value, math.nan], [0.0, 0.0, math.nan]], dtype=torch.float64)
    torch.testing.assert_close(strain, expected, equal_nan=True)


def test_tissue_metrics_give_every_column_and_nan_without_their_inputs():
    item = _item()
    field = torch.zeros(2, 8, 8)
    metrics = tissue_metrics(field, item, CLASSES)
    assert list(metrics) == tissue_columns(CLASSES) == [f"{m}_{c}" for m in ("epe", "tre", "strain", "gt_strain")
                                                       for c in CLASSES]
    # The true field is one row (2 mm) everywhere and has no strain; the zero field misses it by 2 mm.
    assert [metrics[f"epe_{c}"] for c in CLASSES] == pytest.approx([2.0, 2.0, 2.0])
    assert [metrics[f"gt_strain_{c}"] for c in CLASSES] == [0.0, 0.0, 0.0]
    assert metrics["tre_a"] == pytest.approx(2.0) and math.isnan(metrics["tre_background"])  # keypoints in a only
    assert math.isnan(metrics["tre_b"])
    ramp = torch.stack([0.1 * torch.arange(8.0).view(-1, 1).expand(8, 8), torch.zeros(8, 8)])
    assert tissue_metrics(ramp, item, CLASSES)["strain_b"] == pytest.approx(0.1)  # d u_0 / d x_0 = 0.1 mm / mm
    bare = {k: v for k, v in item.items() if k not in ("gt_displacement", "fixed_keypoints")}
    partial = tissue_metrics(field, bare, CLASSES)
    assert all(math.isnan(partial[f"{m}_{c}"]) for m in ("epe", "tre", "gt_strain") for c in CLASSES)
    assert partial["strain_a"] == 0.0
    unlabelled = {k: v for k, v in item.items() if k != "fixed_labels"}
    assert all(math.isnan(v) for v in tissue_metrics(field, unlabelled, CLASSES).values())
