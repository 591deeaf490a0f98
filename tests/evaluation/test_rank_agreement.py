"""Rank agreement of identified stiffness with the true materials, on hand-made tables."""
import math

import pytest

from hypermorph_spatially_adaptive.data.phantom import TISSUES, lame_from_young
from hypermorph_spatially_adaptive.evaluation.rank_agreement import average_ranks, rank_agreement, spearman, \
    young_modulus

TRUE_E = {name: TISSUES[name]["E"] for name in TISSUES}  # bone 1000 > liver 30 > soft tissue 10 > lung 2


def test_young_modulus_inverts_the_lame_pair():
    lam, mu = lame_from_young(30.0, 0.4)
    assert young_modulus(lam, mu) == pytest.approx(30.0)
    assert young_modulus(0.0, 0.5) == pytest.approx(1.0)  # E = 2 mu when lam = 0
    assert young_modulus(0.0, 0.0) == 0.0


def test_spearman_with_ties_uses_average_ranks():
    assert list(average_ranks([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    # ranks a = (1, 2.5, 2.5, 4), b = (1, 2, 3, 4): centred dot 4.5, norms sqrt(4.5 * 5) -> 0.9487
    assert spearman([1.0, 2.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])) and math.isnan(spearman([1.0], [2.0]))


def test_rank_agreement_over_the_foreground_classes():
    truth = {"background": (9.0, 9.0), "soft_tissue": (0.2, 0.1), "lung": (0.0, 0.05), "bone": (0.5, 0.5),
             "liver": (0.4, 0.2)}
    result = rank_agreement(truth, TRUE_E)
    assert result == {"lam_plus_mu": pytest.approx(1.0), "young": pytest.approx(1.0), "classes": 4}
    # The issue's identified order liver > lung > bone > soft tissue, by lam + mu: ranks (1, 3, 2, 4) against the
    # truth's (2, 1, 4, 3) -> d^2 = 1 + 4 + 4 + 1 = 10 -> 1 - 6 * 10 / 60 = 0.0. Young's modulus differs: lung's
    # pair is all lam (E = 0), so E ranks lung lowest.
    found = {"soft_tissue": (0.05, 0.05), "lung": (0.3, 0.0), "bone": (0.1, 0.1), "liver": (0.2, 0.2)}
    result = rank_agreement(found, TRUE_E)
    assert result["lam_plus_mu"] == pytest.approx(0.0)
    # E: soft 0.125, lung 0, bone 0.25, liver 0.5 -> ranks (2, 1, 3, 4) vs truth (2, 1, 4, 3): d^2 = 2 -> 0.8
    assert result["young"] == pytest.approx(0.8)
    tied = {"soft_tissue": (0.1, 0.1), "lung": (0.1, 0.1), "bone": (0.1, 0.1), "liver": (0.1, 0.1)}
    assert math.isnan(rank_agreement(tied, TRUE_E)["young"])
