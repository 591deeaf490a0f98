"""Regularization headroom on hand-made grid tables with known answers."""
import math

import numpy as np
import pytest

from hypermorph_spatially_adaptive.evaluation.headroom import headroom, headroom_from_rows

GRID = [(0.0, 0.0), (0.1, 0.0), (0.5, 0.5)]
# pair -> grid point -> (background, a, b); (0, 0) is best everywhere but is never chosen.
TABLE = {"p1": [(9.0, 0.1, 0.1), (1.0, 1.0, 3.0), (1.0, 2.0, 1.0)],
         "p2": [(9.0, 0.1, 0.1), (1.0, 1.2, 2.6), (1.0, 2.2, 1.4)]}


def _rows(table=TABLE):
    return [(pair, *GRID[g], name, score) for pair, points in table.items() for g, values in enumerate(points)
            for name, score in zip(("background", "a", "b"), values)]


def test_headroom_is_the_class_gain_from_the_global_point_to_its_own():
    # Foreground means: (0.1, 0) 1.95, (0.5, 0.5) 1.65 -> global (0.5, 0.5). Class a: 2.1 there, 1.1 at its own
    # best (0.1, 0) -> gain 1.0 on both pairs; class b is best at the global point -> gain 0.
    a, b = headroom_from_rows(_rows())
    assert (a.class_name, a.global_lam, a.global_mu, a.own_lam, a.own_mu) == ("a", 0.5, 0.5, 0.1, 0.0)
    assert a.global_score == pytest.approx(2.1) and a.own_score == pytest.approx(1.1)
    assert a.gain == pytest.approx(1.0) and a.pair_gains == pytest.approx((1.0, 1.0))
    assert (b.own_lam, b.own_mu) == (0.5, 0.5) and b.gain == 0.0 and b.pair_gains == (0.0, 0.0)


def test_the_own_point_is_best_on_average_not_per_pair_and_nans_are_ignored():
    table = {"p1": [(0, 5.0, 1.0), (0, 1.0, 1.0), (0, 3.0, 1.0)],
             "p2": [(0, 5.0, 1.0), (0, 4.0, 1.0), (0, 2.0, 1.0)],
             "p3": [(0, 5.0, 1.0), (0, float("nan"), 1.0), (0, float("nan"), 1.0)]}
    # Class a: (0.1, 0) mean 2.5, (0.5, 0.5) mean 2.5: a tie, the first in grid order is its own point; the global
    # objective (mean of a and b) ties the same way, so the gain is 0 although p2 alone would gain 2.
    (a, _b) = headroom_from_rows(_rows(table))
    assert (a.own_lam, a.global_lam) == (0.1, 0.1) and a.gain == 0.0 and len(a.pair_gains) == 2
    scores = np.array([[[0, 5.0], [0, 1.0], [0, 3.0]], [[0, 5.0], [0, 4.0], [0, 1.0]]])
    (only,) = headroom(scores, np.array(GRID), ["background", "a"])
    assert only.own_lam == 0.5 and only.global_lam == 0.5 and only.gain == 0.0  # one class: global is its own
    assert math.isclose(only.own_score, 2.0)


def test_headroom_rejects_mismatched_shapes_and_a_grid_of_only_zero():
    with pytest.raises(ValueError, match="scores"):
        headroom(np.zeros((2, 3, 2)), np.zeros((2, 2)), ["background", "a"])
    with pytest.raises(ValueError, match="0, 0"):
        headroom(np.zeros((1, 1, 2)), np.zeros((1, 2)), ["background", "a"])
