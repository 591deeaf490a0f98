"""pair_metrics: the scores every stage reports for one registered pair, checked by hand on tiny items."""
import math

import pytest
import torch

from hypermorph_spatially_adaptive.core import metrics as eval_metrics
from hypermorph_spatially_adaptive.evaluation.pair_metrics import end_point_error, nanmean, pair_metrics

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
