import json
import os

import numpy as np
import pytest
import torch

from hypermorph_spatially_adaptive import HyperVxmDense, RegistrationOutput, VxmDense
from hypermorph_spatially_adaptive.models.hypernetwork import HyperConv
from hypermorph_spatially_adaptive.models.checkpoints import FORMAT
from hypermorph_spatially_adaptive.models.networks import PlainConv, UNet

TINY = dict(enc_features=(4, 8), dec_features=(8, 8, 4), hyper_layers=2, hyper_units=16)


def _model(shape, nb_hyp_params=2, seed=0, flow_std=None, **kwargs):
    torch.manual_seed(seed)
    model = HyperVxmDense(shape, nb_hyp_params, **{**TINY, **kwargs})
    if flow_std is not None:  # a visible velocity, so that the parameters' effect shows in the output
        with torch.no_grad():
            model.flow.weight.normal_(0.0, flow_std)
    return model


def _inputs(shape, batch=2, nb_hyp_params=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    moving = torch.rand(batch, 1, *shape, generator=g)
    fixed = torch.rand(batch, 1, *shape, generator=g)
    hyper = torch.rand(batch, nb_hyp_params, generator=g) * 0.5
    return moving, fixed, hyper


@pytest.mark.parametrize("shape", [(16, 20), (8, 8, 12)])
def test_zero_final_conv_returns_the_moving_image(shape):
    model = _model(shape)
    with torch.no_grad():
        model.flow.weight.zero_()
    moving, fixed, hyper = _inputs(shape)
    out = model(moving, fixed, hyper)
    assert isinstance(out, RegistrationOutput)
    assert torch.equal(out.velocity, torch.zeros_like(out.velocity))
    assert torch.equal(out.displacement, torch.zeros_like(out.displacement))
    torch.testing.assert_close(out.warped, moving, atol=1e-5, rtol=0)  # grid_sample rounding only


@pytest.mark.parametrize("shape", [(23, 29), (9, 10, 11)])
@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
def test_odd_sizes_give_outputs_of_the_input_size(shape, pad_mode):
    model = _model(shape, pad_mode=pad_mode, flow_std=0.1)
    moving, fixed, hyper = _inputs(shape)
    out = model(moving, fixed, hyper)
    assert out.warped.shape == moving.shape
    assert out.displacement.shape == out.velocity.shape == (2, len(shape), *shape)
    assert out.velocity.abs().max() > 0


def test_sizes_other_than_inshape_are_accepted():
    model = _model((16, 16))
    moving, fixed, hyper = _inputs((20, 13), batch=1)
    assert model(moving, fixed, hyper).warped.shape == (1, 1, 20, 13)


@pytest.mark.parametrize("pad_mode, torch_mode", [("replicate", "replicate"), ("zeros", "constant")])
def test_odd_sizes_are_padded_evenly_and_cropped_back_at_the_same_place(pad_mode, torch_mode):
    # two levels: sizes become multiples of 4; 23 -> 24 pads (0 before, 1 after), 29 -> 32 pads (1, 2)
    model = _model((23, 29), pad_mode=pad_mode, flow_std=0.1)
    moving, fixed, hyper = _inputs((23, 29))
    padded = torch.nn.functional.pad(torch.cat([moving, fixed], 1), (1, 2, 0, 1), mode=torch_mode)
    expected = model.flow(model.unet(padded, model.embed(hyper)))[..., 0:23, 1:30]
    torch.testing.assert_close(model(moving, fixed, hyper).velocity, expected)


def test_padding_is_cropped_so_the_velocity_matches_the_unpadded_network_on_a_divisible_crop():
    # with zero padding, an input that is already divisible is not padded: the crop leaves it unchanged
    model = _model((16, 16), pad_mode="zeros", flow_std=0.1)
    moving, fixed, hyper = _inputs((16, 16))
    out = model(moving, fixed, hyper)
    direct = model.flow(model.unet(torch.cat([moving, fixed], 1), model.embed(hyper)))
    torch.testing.assert_close(out.velocity, direct)


def test_each_sample_of_a_batch_uses_its_own_parameters():
    shape = (16, 16)
    model = _model(shape, flow_std=0.1)
    moving, fixed, hyper = _inputs(shape, batch=3)
    batched = model(moving, fixed, hyper)
    for i in range(3):
        single = model(moving[i:i + 1], fixed[i:i + 1], hyper[i:i + 1])
        torch.testing.assert_close(batched.velocity[i:i + 1], single.velocity, atol=1e-6, rtol=1e-4)


def test_identical_parameter_rows_share_one_kernel_with_the_same_result():
    shape = (16, 16)
    model = _model(shape, flow_std=0.1)
    moving, fixed, hyper = _inputs(shape, batch=3)
    same = hyper[:1].expand(3, -1).contiguous()
    assert model.embed(same).shape[0] == 1
    batched = model(moving, fixed, same)
    for i in range(3):
        single = model(moving[i:i + 1], fixed[i:i + 1], same[i:i + 1])
        torch.testing.assert_close(batched.velocity[i:i + 1], single.velocity, atol=1e-6, rtol=1e-4)


def test_parameters_change_the_output_and_equal_parameters_reproduce_it():
    shape = (16, 16)
    model = _model(shape, flow_std=0.1)
    moving, fixed, _ = _inputs(shape, batch=1)
    a, b = torch.tensor([[0.1, 0.2]]), torch.tensor([[0.8, 0.1]])
    va = model(moving, fixed, a).velocity
    vb = model(moving, fixed, b).velocity
    assert (va - vb).abs().max() > 1e-3 * va.abs().max()
    assert torch.equal(va, model(moving, fixed, a).velocity)


def test_gradients_reach_the_hypernetwork_from_the_image_loss():
    shape = (16, 16)
    model = _model(shape)
    moving, fixed, hyper = _inputs(shape)
    out = model(moving, fixed, hyper)
    (out.warped - fixed).square().mean().backward()
    assert model.hypernetwork.layers[0].weight.grad.abs().sum() > 0
    assert model.flow.weight.grad.abs().sum() > 0


def test_zero_integration_steps_use_the_velocity_as_displacement():
    model = _model((16, 16), int_steps=0, flow_std=0.1)
    out = model(*_inputs((16, 16)))
    assert torch.equal(out.displacement, out.velocity)


def test_every_unet_conv_is_a_hyper_conv_and_the_flow_conv_is_plain():
    model = _model((16, 16))
    convs = list(model.unet.encoder) + list(model.unet.decoder)
    assert len(convs) == 2 + 3 and all(isinstance(c, HyperConv) for c in convs)
    assert [c.out_channels for c in convs] == [4, 8, 8, 8, 4]
    # decoder inputs: bottleneck 8, then 8 + skip 8, then 8 + skip 4
    assert [c.in_channels for c in model.unet.decoder] == [8, 16, 12]
    assert isinstance(model.flow, PlainConv) and model.flow.weight.shape == (2, 4, 3, 3)
    assert model.flow.weight.std() < 1e-4 and torch.equal(model.flow.bias, torch.zeros(2))


def test_plain_baseline_uses_the_same_unet_with_plain_convs():
    torch.manual_seed(0)
    plain = VxmDense((9, 10, 11), enc_features=(4, 8), dec_features=(8, 8, 4))
    assert all(isinstance(c, PlainConv) for c in list(plain.unet.encoder) + list(plain.unet.decoder))
    moving, fixed, _ = _inputs((9, 10, 11), batch=1)
    out = plain(moving, fixed)
    assert out.warped.shape == moving.shape and out.velocity.shape == (1, 3, 9, 10, 11)


def test_unet_without_extra_decoder_convs_ends_on_the_last_concatenation():
    unet = UNet(2, 2, (4, 8), (8, 8), lambda cin, cout: PlainConv(2, cin, cout))
    assert unet.out_channels == 8 + 4
    assert unet(torch.rand(1, 2, 8, 8)).shape == (1, 12, 8, 8)
    with pytest.raises(ValueError, match="dec_features"):
        UNet(2, 2, (4, 8, 8), (8, 8), lambda cin, cout: PlainConv(2, cin, cout))


def test_config_is_json_serialisable_and_rebuilds_the_model():
    model = _model((9, 10, 11), nb_hyp_params=6)
    config = json.loads(json.dumps(model.config))
    assert config["inshape"] == [9, 10, 11] and config["nb_hyp_params"] == 6
    assert model.nb_hyp_params == 6 and model.ndim == 3
    rebuilt = HyperVxmDense(**config)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_save_then_load_gives_identical_outputs(tmp_path):
    model = _model((16, 16), flow_std=0.1)
    inputs = _inputs((16, 16))
    path = tmp_path / "sub" / "model.pt"
    model.save(path)
    assert os.listdir(path.parent) == ["model.pt"]  # no temp file left behind
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["model_config"] == model.config
    loaded = HyperVxmDense.load(path)
    assert torch.equal(loaded(*inputs).velocity, model(*inputs).velocity)


def test_load_accepts_a_training_checkpoint_with_rng_states(tmp_path):
    model = _model((9, 10, 11), nb_hyp_params=4, flow_std=0.1)
    optimizer = torch.optim.Adam(model.parameters())
    moving, fixed, hyper = _inputs((9, 10, 11), nb_hyp_params=4)
    model(moving, fixed, hyper).warped.mean().backward()
    optimizer.step()
    checkpoint = {
        "format": FORMAT, "config": {"lr": 1e-4, "dataset": "phantom", "out": tmp_path}, "model_config": model.config,
        "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "step": 1, "epoch": 0,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "numpy_generator": np.random.default_rng(0).bit_generator.state},
    }
    torch.save(checkpoint, tmp_path / "last.pt")
    loaded = HyperVxmDense.load(tmp_path / "last.pt")
    assert torch.equal(loaded(moving, fixed, hyper).velocity, model(moving, fixed, hyper).velocity)


@pytest.mark.parametrize("missing", ["model_config", "model_state"])
def test_load_names_the_file_and_the_missing_key(tmp_path, missing):
    model = _model((16, 16))
    payload = {"model_config": model.config, "model_state": model.state_dict()}
    del payload[missing]
    path = tmp_path / "broken.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=missing) as info:
        HyperVxmDense.load(path)
    assert str(path) in str(info.value)


def test_load_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        HyperVxmDense.load(path)


def test_load_rejects_a_state_that_does_not_fit_the_config(tmp_path):
    model = _model((16, 16))
    config = {**model.config, "enc_features": [4, 4]}
    torch.save({"format": FORMAT, "model_config": config, "model_state": model.state_dict()},
               tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="mixed.pt.*model_state"):
        HyperVxmDense.load(tmp_path / "mixed.pt")


@pytest.mark.parametrize("case, match", [
    ("wrong_p", r"hyper.*P=2"),
    ("hyper_1d", r"hyper.*P=2"),
    ("channels", r"moving must have shape \[B, 1, \*S\]"),
    ("fixed_channels", r"fixed must have shape \[B, 1, \*S\]"),
    ("shapes", "moving and fixed .*shapes differ"),
    ("batch", "moving and fixed .*batch sizes differ"),
    ("hyper_batch", "hyper batch size"),
    ("nan_moving", "moving contains NaN"),
    ("nan_fixed", "fixed contains NaN"),
    ("nan_hyper", "hyper must be a finite"),
    ("axes", "moving must have shape .* 2 spatial axes"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(case, match):
    model = _model((16, 16))
    moving, fixed, hyper = _inputs((16, 16))
    if case == "wrong_p":
        hyper = torch.rand(2, 3)
    elif case == "hyper_1d":
        hyper = torch.rand(2)
    elif case == "channels":
        moving = torch.rand(2, 2, 16, 16)
    elif case == "fixed_channels":
        fixed = torch.rand(2, 2, 16, 16)
    elif case == "shapes":
        fixed = torch.rand(2, 1, 16, 17)
    elif case == "batch":
        fixed = torch.rand(1, 1, 16, 16)
    elif case == "hyper_batch":
        hyper = torch.rand(3, 2)
    elif case == "nan_moving":
        moving[0, 0, 3, 3] = float("nan")
    elif case == "nan_fixed":
        fixed[1, 0, 0, 0] = float("nan")
    elif case == "nan_hyper":
        hyper[0, 1] = float("nan")
    elif case == "axes":
        moving, fixed = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=match):
        model(moving, fixed, hyper)


def test_bad_constructor_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="inshape"):
        HyperVxmDense((16,), 2)
    with pytest.raises(ValueError, match="nb_hyp_params"):
        HyperVxmDense((16, 16), 0)
    with pytest.raises(ValueError, match="int_steps"):
        HyperVxmDense((16, 16), 2, int_steps=-1, **TINY)
    with pytest.raises(ValueError, match="pad_mode"):
        HyperVxmDense((16, 16), 2, pad_mode="reflect", **TINY)


def test_plain_baseline_saves_and_loads_through_the_shared_code(tmp_path):
    torch.manual_seed(0)
    plain = VxmDense((16, 16), enc_features=(4, 8), dec_features=(8, 8, 4))
    with torch.no_grad():
        plain.flow.weight.normal_(0.0, 0.1)
    plain.save(tmp_path / "plain.pt")
    moving, fixed, _ = _inputs((16, 16))
    assert torch.equal(VxmDense.load(tmp_path / "plain.pt")(moving, fixed).velocity, plain(moving, fixed).velocity)
    with pytest.raises(ValueError, match="does not fit HyperVxmDense"):
        HyperVxmDense.load(tmp_path / "plain.pt")


def test_spatial_model_from_a_global_one_agrees_for_class_constant_parameters():
    from hypermorph_spatially_adaptive.models.networks import spatial_from_global

    torch.manual_seed(0)
    global_model = HyperVxmDense((16, 16), 2, enc_features=(4, 8), dec_features=(8, 8, 4), hyper_layers=2,
                                 hyper_units=8, int_steps=2).eval()
    spatial = spatial_from_global(global_model, 3).eval()
    moving, fixed = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    lam_mu = torch.tensor([[0.2, 0.5], [0.7, 0.1]])
    with torch.no_grad():
        expected = global_model(moving, fixed, lam_mu).velocity
        got = spatial(moving, fixed, lam_mu.repeat_interleave(3, dim=1)).velocity
        other = spatial(moving, fixed, torch.tensor([[0.2, 0.9, 0.0, 0.5, 0.0, 0.1]] * 2)).velocity
    assert spatial.nb_hyp_params == 6
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(other, expected)
    with pytest.raises(ValueError, match="num_classes"):
        spatial_from_global(global_model, 1)
