"""The training step checks its batch once, on the CPU, and reads no other data: no isfinite or range check runs
inside it, while the public entry points (model forward, registration_loss) still check everything."""
import contextlib

import pytest
import torch

from hypermorph_spatially_adaptive import HyperVxmDense
from hypermorph_spatially_adaptive.core.objective import registration_loss
from hypermorph_spatially_adaptive.runtime import DistributedContext
from hypermorph_spatially_adaptive.stages.training.step import (LossOptions, check_batch, training_network,
                                                                training_step)

CLASSES = 3
TINY = dict(enc_features=(4, 8), dec_features=(8, 8, 4), hyper_layers=2, hyper_units=8)


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (2, 1, 4, 4), generator=generator).repeat_interleave(4, 2)
    return {"fixed": torch.rand(2, 1, 16, 16, generator=generator),
            "moving": torch.rand(2, 1, 16, 16, generator=generator),
            "fixed_labels": labels.repeat_interleave(4, 3), "pair_id": ["a", "b"]}


def _setup(classes=CLASSES):
    torch.manual_seed(0)
    model = HyperVxmDense((16, 16), 2 * classes, **TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    options = LossOptions("elastic", classes, "fixed_labels", 5)
    hyper = torch.rand(2, 2 * classes) * 0.5
    return model, optimizer, options, hyper


class _DataReads:
    """Counts calls of the functions that data checks use (each a host-device sync on a GPU)."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("isfinite", "aminmax"):
            real = getattr(torch, name)
            monkeypatch.setattr(torch, name, self._counting(name, real))

    def _counting(self, name, real):
        def wrapper(*args, **kwargs):
            self.calls.append(name)
            return real(*args, **kwargs)
        return wrapper


@pytest.mark.parametrize("classes", [1, CLASSES])
def test_the_training_step_reads_no_data_for_checks(classes, monkeypatch):
    model, optimizer, options, hyper = _setup(classes)
    network = training_network(model, DistributedContext(), torch.device("cpu"))
    batch = _batch()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    reads = _DataReads(monkeypatch)
    loss, similarity, regularization = training_step(network, optimizer, batch, hyper, (2.0, 2.0), options,
                                                     contextlib.nullcontext())
    assert reads.calls == []
    assert loss == pytest.approx(similarity + regularization)
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())  # a step was made
    # The public path checks: model forward and the loss with validate=True read the data.
    output = model(batch["moving"], batch["fixed"], hyper)
    registration_loss(batch["fixed"], output.warped, output.velocity, hyper, num_classes=classes,
                      labels=batch["fixed_labels"], spacing=(2.0, 2.0), ncc_window=5)
    assert "isfinite" in reads.calls and "aminmax" in reads.calls


def test_unchecked_and_checked_paths_compute_the_same_loss():
    model, _, options, hyper = _setup()
    batch = _batch(1)
    checked = model(batch["moving"], batch["fixed"], hyper)
    unchecked = model.forward_unchecked(batch["moving"], batch["fixed"], hyper)
    torch.testing.assert_close(unchecked.velocity, checked.velocity)
    terms = [registration_loss(batch["fixed"], checked.warped, checked.velocity, hyper, num_classes=CLASSES,
                               labels=batch["fixed_labels"], spacing=(2.0, 2.0), ncc_window=5, validate=validate)
             for validate in (True, False)]
    for a, b in zip(*terms):
        torch.testing.assert_close(a, b)


def test_a_step_with_a_non_finite_loss_leaves_the_weights_unchanged():
    model, optimizer, options, hyper = _setup()
    batch = _batch()
    batch["moving"][0, 0, 0, 0] = float("nan")  # not checked inside the step: the loss shows it
    before = {name: value.clone() for name, value in model.state_dict().items()}
    loss, _, _ = training_step(training_network(model, DistributedContext(), torch.device("cpu")), optimizer, batch,
                               hyper, (2.0, 2.0), options, contextlib.nullcontext())
    assert loss != loss
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("case, match", [("nan_image", "moving contains NaN"), ("labels", "fixed_labels must lie")])
def test_the_batch_check_names_the_pairs_and_the_problem(case, match):
    _, _, options, _ = _setup()
    batch = _batch()
    if case == "nan_image":
        batch["moving"][1, 0, 2, 2] = float("nan")
    else:
        batch["fixed_labels"][0, 0, 0, 0] = CLASSES
    with pytest.raises(ValueError, match=rf"pairs \['a', 'b'\]: .*{match}"):
        check_batch(batch, options)
    check_batch(_batch(), options)  # a good batch passes
