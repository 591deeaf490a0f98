"""Locality and leakage of spatial models, on hand-built models whose answers are known."""
import math

import pytest
import torch

from hypermorph_spatially_adaptive.core.metrics import strain_magnitude
from hypermorph_spatially_adaptive.core.transform import identity_grid
from hypermorph_spatially_adaptive.evaluation.locality import locality_sums, locality_vectors, measure_locality
from hypermorph_spatially_adaptive.models.networks import RegistrationOutput

CLASSES = ("background", "a", "b")
SHAPE = (24, 24)


def _labels() -> torch.Tensor:
    labels = torch.zeros(SHAPE, dtype=torch.int64)
    labels[2:11, 3:20] = 1
    labels[13:22, 3:20] = 2
    return labels


def _bumps(labels: torch.Tensor) -> torch.Tensor:
    """A smooth bump [C, *S] per class, zero on the class border and outside it (two voxels in from the edge)."""
    x = identity_grid(SHAPE, dtype=torch.float64)[0]
    bumps = []
    for c in range(len(CLASSES)):
        inside = labels == c
        coords = x[:, inside]
        low, high = coords.amin(1), coords.amax(1)
        centre, half = (low + high) / 2, (high - low) / 2 - 2
        t = ((x - centre.view(2, 1, 1)) / half.clamp(min=1).view(2, 1, 1)).clamp(-1, 1)
        bump = ((1 - t[0] ** 2) * (1 - t[1] ** 2)).clamp(min=0) ** 2
        bumps.append(torch.where(inside, bump, torch.zeros_like(bump)) if c else torch.zeros_like(bump))
    return torch.stack(bumps)


class _HandBuilt(torch.nn.Module):
    """Displacement ``sum_c g(values) bump_c(x)`` along axis 0: ``local`` uses class c's own lam + mu for its bump,
    otherwise every bump follows the mean of lam + mu over the classes (a model that sees the class mean)."""

    def __init__(self, local: bool):
        super().__init__()
        self.local = local
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a parameter, for the device
        self.nb_hyp_params = 2 * len(CLASSES)

    def forward(self, moving, fixed, hyper, labels):
        bumps = _bumps(labels[0, 0])
        stiffness = hyper[:, :3] + hyper[:, 3:]  # [K, C]
        if not self.local:
            stiffness = stiffness.mean(1, keepdim=True).expand_as(stiffness)
        amplitude = (1.0 - stiffness).double()  # stiffer: smaller deformation
        along = torch.einsum("kc,c...->k...", amplitude, bumps)
        displacement = torch.stack([along, torch.zeros_like(along)], dim=1)
        return RegistrationOutput(moving, displacement, displacement)


def _items(count=2):
    labels = _labels()
    return [{"fixed": torch.rand(1, *SHAPE), "moving": torch.rand(1, *SHAPE), "fixed_labels": labels[None],
             "spacing": torch.tensor([1.5, 1.0]), "pair_id": f"p{i}"} for i in range(count)]


def test_an_exactly_local_model_has_locality_one_and_no_leakage():
    result = measure_locality(_HandBuilt(local=True), _items(), CLASSES)
    assert result.class_names == CLASSES and result.pairs == 2
    for value in result.locality:
        assert value == pytest.approx(1.0, abs=1e-12)
    for value in result.leakage:
        assert value == pytest.approx(0.0, abs=1e-12)
    assert set(result.columns("val_")) == {"val_locality_a", "val_locality_b", "val_leakage_a", "val_leakage_b"}


def test_a_model_that_sees_the_class_mean_has_locality_one_over_the_number_of_classes():
    result = measure_locality(_HandBuilt(local=False), _items(1), CLASSES)
    for value in result.locality:
        assert value == pytest.approx(1.0 / len(CLASSES), rel=1e-6)  # float32 parameter vectors
    # Raising one class moves every bump: its change outside the class is the strain of the other bumps.
    labels = _labels()
    bumps = _bumps(labels).sum(0)
    strain = strain_magnitude(torch.stack([bumps, torch.zeros_like(bumps)]), (1.5, 1.0))
    for c, value in enumerate(result.leakage, start=1):
        expected = strain[labels != c].mean() / strain[labels == c].mean()
        assert value == pytest.approx(float(expected), rel=1e-5) and value > 0.1


def test_locality_vectors_raise_one_class_at_a_time_in_the_lambda_then_mu_layout():
    vectors = locality_vectors(3, (0.1, 0.2), (0.5, 0.4))
    expected = [[0.1, 0.1, 0.1, 0.2, 0.2, 0.2],
                [0.5, 0.5, 0.5, 0.4, 0.4, 0.4],
                [0.1, 0.5, 0.1, 0.2, 0.4, 0.2],
                [0.1, 0.1, 0.5, 0.2, 0.2, 0.4]]
    torch.testing.assert_close(vectors, torch.tensor(expected))
    with pytest.raises(ValueError, match=">= 2 classes"):
        locality_vectors(1, (0.1, 0.2), (0.5, 0.4))


def test_a_class_absent_from_the_labels_gives_nan():
    displacements = torch.randn(4, 2, *SHAPE, dtype=torch.float64)
    labels = torch.zeros(SHAPE, dtype=torch.int64)
    labels[:5] = 1
    result = locality_sums(displacements, labels, (1.0, 1.0)).result(CLASSES, 1)
    assert math.isfinite(result.locality[0]) and math.isnan(result.locality[1]) and math.isnan(result.leakage[1])
