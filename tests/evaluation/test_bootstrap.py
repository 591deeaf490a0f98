"""Two-stage bootstrap intervals over seeds and pairs, and paired differences."""
import math

import numpy as np
import pytest

from hypermorph_spatially_adaptive.evaluation.bootstrap import hierarchical_bootstrap, paired_estimate


def test_the_mean_pools_every_finite_value_and_the_interval_brackets_it():
    groups = [[1.0, 2.0, 3.0], [4.0, float("nan")], [5.0]]
    estimate = hierarchical_bootstrap(groups, resamples=500)
    assert estimate.mean == pytest.approx(3.0) and (estimate.n, estimate.groups) == (5, 3)
    assert estimate.low <= estimate.mean <= estimate.high


def test_identical_values_give_a_zero_width_interval():
    estimate = hierarchical_bootstrap([[0.4, 0.4], [0.4]], resamples=200)
    assert estimate.low == pytest.approx(0.4) and estimate.high == pytest.approx(0.4)


def test_spread_between_seeds_widens_the_interval_beyond_the_spread_within():
    rng = np.random.default_rng(0)
    within = [list(rng.normal(0.0, 0.01, 20)) for _ in range(4)]
    between = [list(rng.normal(offset, 0.01, 20)) for offset in (-0.5, -0.2, 0.2, 0.5)]
    narrow, wide = hierarchical_bootstrap(within), hierarchical_bootstrap(between)
    assert (wide.high - wide.low) > 10 * (narrow.high - narrow.low)


def test_paired_differences_count_improvements_and_test_them():
    method = [[1.0, 2.0, 3.0, 4.0], [1.0, 1.0]]
    baseline = [[1.5, 2.5, 3.5, 4.5], [1.5, 0.5]]
    estimate = paired_estimate(method, baseline, resamples=300)
    assert estimate.mean == pytest.approx((-0.5 * 5 + 0.5) / 6)
    assert estimate.improved == 5 and 0 < estimate.p_value < 1


def test_no_finite_value_gives_nan():
    estimate = hierarchical_bootstrap([[float("nan")], []])
    assert math.isnan(estimate.mean) and estimate.n == 0
    assert hierarchical_bootstrap([[1.0, 1.0]]).excludes_zero()
    assert not hierarchical_bootstrap([[-1.0, 1.0]]).excludes_zero()


def test_one_seed_resamples_its_pairs():
    estimate = hierarchical_bootstrap([[0.0, 1.0, 2.0, 3.0]], resamples=500)
    assert estimate.high - estimate.low > 0.5


def test_equal_group_means_with_spread_inside_still_give_an_interval():
    estimate = hierarchical_bootstrap([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]], resamples=500)
    assert estimate.mean == pytest.approx(1.0) and estimate.high - estimate.low > 0.3


def test_the_level_is_the_coverage_asked_for():
    values = np.random.default_rng(3).standard_normal(400)
    expected = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    estimate = hierarchical_bootstrap([list(values)], resamples=4000, level=0.95)
    half_width = (estimate.high - estimate.low) / 2.0
    assert half_width == pytest.approx(expected, rel=0.1)
    ninety = hierarchical_bootstrap([list(values)], resamples=4000, level=0.90)
    assert (ninety.high - ninety.low) / 2.0 == pytest.approx(1.645 / 1.96 * expected, rel=0.1)
