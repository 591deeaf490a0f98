import pytest
import torch

from hypermorph_spatially_adaptive.core.hyperparams import (hyperparam_names, join_hyperparams, sample_hyperparams,
                                                       similarity_weight, split_hyperparams, validate_hyperparams)

EPS = torch.finfo(torch.float32).eps


def _draws(n=20000, num_classes=1, seed=0, **kwargs):
    return sample_hyperparams(n, num_classes, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_samples_lie_in_unit_range_and_never_sum_above_one(num_classes):
    h = _draws(5000, num_classes)
    assert h.shape == (5000, 2 * num_classes) and h.dtype == torch.float32
    lam, mu = split_hyperparams(h, num_classes)
    assert h.min() >= 0 and h.max() <= 1
    assert (lam + mu).max() <= 1 + EPS
    validate_hyperparams(h, num_classes)


def test_lambda_end_points_are_drawn_at_the_stated_rate():
    lam, _ = split_hyperparams(_draws(), 1)
    assert (lam == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (lam == 1).float().mean().item() == pytest.approx(0.1, abs=0.01)
    interior = lam[(lam > 0) & (lam < 1)]
    # the remaining 80 % are U(0, 1): mean 1/2, variance 1/12
    assert interior.numel() == pytest.approx(16000, abs=200)
    assert interior.mean().item() == pytest.approx(0.5, abs=0.01)
    assert interior.var().item() == pytest.approx(1 / 12, abs=0.005)


def test_mu_end_points_are_drawn_at_the_stated_rate_relative_to_one_minus_lambda():
    lam, mu = split_hyperparams(_draws(seed=1), 1)
    free = (lam > 0) & (lam < 1)  # lam = 1 forces mu = 0, lam = 0 makes the upper end point 1
    lam, mu = lam[free], mu[free]
    at_zero = (mu == 0).float().mean().item()
    at_upper = (mu == 1 - lam).float().mean().item()
    assert at_zero == pytest.approx(0.1, abs=0.01)
    assert at_upper == pytest.approx(0.1, abs=0.01)
    ratio = (mu / (1 - lam))[(mu > 0) & (mu < 1 - lam)]
    assert ratio.mean().item() == pytest.approx(0.5, abs=0.01)
    assert ratio.max() < 1


def test_lambda_one_forces_mu_zero():
    lam, mu = split_hyperparams(_draws(seed=2), 1)
    assert (lam == 1).any()
    assert (mu[lam == 1] == 0).all()


@pytest.mark.parametrize("prob, expected", [(0.0, 0.0), (1.0, 1.0)])
def test_endpoint_probability_zero_and_one(prob, expected):
    lam, _ = split_hyperparams(_draws(2000, endpoint_prob=prob), 1)
    rate = ((lam == 0) | (lam == 1)).float().mean().item()
    assert rate == expected


def test_sampling_is_reproducible_with_the_same_generator_seed():
    a = _draws(100, 3, seed=7)
    b = _draws(100, 3, seed=7)
    c = _draws(100, 3, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_classes_are_sampled_independently():
    lam, _ = split_hyperparams(_draws(4000, 2, seed=3), 2)
    corr = torch.corrcoef(lam.T)[0, 1].item()
    assert abs(corr) < 0.05
    assert not torch.equal(lam[:, 0], lam[:, 1])


def test_device_argument_places_the_result():
    h = sample_hyperparams(3, 2, device="cpu")
    assert h.device.type == "cpu" and h.shape == (3, 4)


def test_split_and_join_round_trip_with_lambdas_first():
    h = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    lam, mu = split_hyperparams(h, 3)
    assert lam[0].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert mu[0].tolist() == pytest.approx([0.4, 0.5, 0.6])
    assert torch.equal(join_hyperparams(lam, mu), h)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[0.2, 0.3, 0.1]]), r"\[B, 4\]"),
    (torch.tensor([[0.2, 1.2, 0.1, 0.0]]), r"\[0, 1\]"),
    (torch.tensor([[-0.1, 0.2, 0.1, 0.0]]), r"\[0, 1\]"),
    (torch.tensor([[0.6, 0.2, 0.5, 0.0]]), r"lam \+ mu <= 1"),
    (torch.tensor([[float("nan"), 0.2, 0.1, 0.0]]), "NaN"),
])
def test_validate_rejects_bad_vectors_naming_the_argument(bad, match):
    with pytest.raises(ValueError, match=match) as info:
        validate_hyperparams(bad, 2, name="params")
    assert "params" in str(info.value)


def test_validate_accepts_sums_of_exactly_one():
    lam = torch.tensor([[0.3, 1.0]])
    h = join_hyperparams(lam, 1 - lam)
    assert validate_hyperparams(h, 2) is h


def test_split_and_join_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"h must have shape \[B, 2\]"):
        split_hyperparams(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="same shape"):
        join_hyperparams(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="num_classes"):
        sample_hyperparams(2, 0)


def test_names_follow_the_vector_order():
    assert hyperparam_names(["background", "lung"]) == ["lam_background", "lam_lung", "mu_background", "mu_lung"]
    with pytest.raises(ValueError):
        hyperparam_names([])


def test_similarity_weight_is_one_minus_lam_minus_mu_and_never_negative():
    assert similarity_weight(0.25, 0.5) == pytest.approx(0.25)
    lam = torch.tensor([0.2, 0.7, 0.6])
    mu = torch.tensor([0.3, 0.3, 0.4 + 1e-7])
    out = similarity_weight(lam, mu)
    assert out[:2].tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    assert out[2] == 0
