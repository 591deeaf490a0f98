import pytest
import torch
import torch.nn.functional as F

from hypermorph_spatially_adaptive.models.hypernetwork import (HyperConv, HyperNetwork, LinearHead, hyper_conv,
                                                               kaiming_std)
from hypermorph_spatially_adaptive.core.hyperparams import sample_hyperparams


def _setup(ndim, batch=3, cin=3, cout=4, units=16, seed=0):
    torch.manual_seed(seed)
    net = HyperNetwork(2, layers=3, units=units)
    conv = HyperConv(ndim, cin, cout, units)
    shape = (12, 10) if ndim == 2 else (6, 7, 5)
    x = torch.randn(batch, cin, *shape)
    hyper = sample_hyperparams(batch, generator=torch.Generator().manual_seed(seed))
    return net, conv, x, hyper


def test_hypernetwork_maps_parameters_to_a_nonnegative_embedding():
    net = HyperNetwork(6, layers=4, units=32)
    out = net(torch.rand(5, 6))
    assert out.shape == (5, 32)
    assert (out >= 0).all()
    assert len(net.layers) == 4


def test_zero_parameter_vector_is_not_a_dead_input():
    torch.manual_seed(0)
    net = HyperNetwork(2, layers=6, units=128)
    assert net(torch.zeros(1, 2)).abs().sum() > 0


def test_linear_head_is_nn_linear_with_the_weight_stored_transposed():
    torch.manual_seed(0)
    head = LinearHead(5, 7)
    with torch.no_grad():
        head.weight.normal_()
        head.bias.normal_()
    embedding = torch.randn(3, 5)
    expected = F.linear(embedding, head.weight.t(), head.bias)
    torch.testing.assert_close(head(embedding), expected)
    assert head.weight.shape == (5, 7)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_batched_hyper_conv_equals_a_per_sample_loop(ndim, stride):
    net, _, x, hyper = _setup(ndim)
    conv = HyperConv(ndim, 3, 4, 16, stride=stride)
    out = conv(x, net(hyper))
    conv_fn = F.conv2d if ndim == 2 else F.conv3d
    weights, biases = conv.generate(net(hyper))
    expected = torch.cat([conv_fn(x[i:i + 1], weights[i], biases[i], stride=stride, padding=1)
                          for i in range(x.shape[0])])
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.shape[2:] == tuple((n + 1) // 2 if stride == 2 else n for n in x.shape[2:])


def test_one_embedding_row_applies_the_same_kernel_to_every_sample():
    net, conv, x, hyper = _setup(2)
    single = net(hyper[:1])
    shared = conv(x, single)
    repeated = conv(x, single.expand(x.shape[0], -1))
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_hypernetwork_through_the_generated_kernels():
    net, conv, x, hyper = _setup(2)
    conv(x, net(hyper)).square().mean().backward()
    first = net.layers[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert conv.weight_head.weight.grad.abs().sum() > 0
    assert conv.bias_head.weight.grad.abs().sum() > 0


def test_gradient_of_grouped_path_matches_per_sample_loop():
    net, conv, x, hyper = _setup(2, batch=2)
    conv(x, net(hyper)).square().sum().backward()
    grouped = net.layers[0].weight.grad.clone()
    net.zero_grad()
    conv.zero_grad()
    sum(conv(x[i:i + 1], net(hyper[i:i + 1])).square().sum() for i in range(2)).backward()
    torch.testing.assert_close(grouped, net.layers[0].weight.grad, atol=1e-5, rtol=1e-4)


def test_different_parameters_give_different_kernels_and_equal_parameters_equal_outputs():
    net, conv, x, _ = _setup(3, batch=2)
    a = torch.tensor([[0.1, 0.2]])
    b = torch.tensor([[0.7, 0.3]])
    wa, _ = conv.generate(net(a))
    wb, _ = conv.generate(net(b))
    assert (wa - wb).abs().max() > 1e-3 * wa.abs().max()
    out1 = conv(x, net(a.expand(2, -1).contiguous()))
    out2 = conv(x, net(a.expand(2, -1).contiguous()))
    assert torch.equal(out1, out2)


@pytest.mark.parametrize("ndim, cin", [(2, 2), (2, 48), (3, 32)])
def test_generated_kernels_start_with_kaiming_variance(ndim, cin):
    torch.manual_seed(1)
    net = HyperNetwork(2, layers=6, units=128)
    conv = HyperConv(ndim, cin, 16, 128)
    weights, biases = conv.generate(net(sample_hyperparams(64, generator=torch.Generator().manual_seed(1))))
    target = kaiming_std(cin * 3 ** ndim)
    assert weights.std().item() == pytest.approx(target, rel=0.25)
    # zero-mean: the mean of one kernel's numel entries is within a few standard errors of 0
    assert weights.mean().abs().item() < 4 * target / weights[0].numel() ** 0.5
    assert torch.equal(biases, torch.zeros_like(biases))


def test_hyper_conv_function_rejects_mismatched_kernels():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="weight must have shape"):
        hyper_conv(x, torch.randn(3, 4, 3, 3, 3), None)
    with pytest.raises(ValueError, match="bias must have shape"):
        hyper_conv(x, torch.randn(2, 4, 3, 3, 3), torch.randn(2, 5))


def test_bad_constructor_and_forward_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="kernel_size"):
        HyperConv(2, 3, 4, 16, kernel_size=4)
    with pytest.raises(ValueError, match="ndim"):
        HyperConv(4, 3, 4, 16)
    with pytest.raises(ValueError, match="units"):
        HyperNetwork(2, units=0)
    net, conv, x, hyper = _setup(2)
    with pytest.raises(ValueError, match="hyper must have shape"):
        net(torch.rand(3, 5))
    with pytest.raises(ValueError, match="x must have shape"):
        conv(torch.randn(3, 2, 12, 10), net(hyper))
    with pytest.raises(ValueError, match="embedding must have 1 or B=3 rows"):
        conv(x, net(hyper[:2]))
    with pytest.raises(ValueError, match=r"embedding must have shape \[B, 16\]"):
        conv(x, torch.rand(3, 8))
