"""Warp layers, the θ/φ split and the functional forward."""

import pytest
import torch
from torch import nn

from warpgrad import WarpedModel, WarpLayer, conv4, mlp, warp_stack, warped_lstm
from warpgrad.models import ParamSpec


@pytest.mark.parametrize("kind", ["scale", "linear", "conv3x3"])
def test_identity_initialised_warps_are_the_identity(kind):
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(WarpLayer(6, kind)(x), x)


def test_vector_warps_and_options_change_the_map():
    x = torch.randn(8, 6)
    torch.testing.assert_close(WarpLayer(6, "linear", spatial=False)(x), x)
    relu = WarpLayer(6, "linear", spatial=False, activation="relu")
    torch.testing.assert_close(relu(x), x.clamp(min=0))
    residual = WarpLayer(6, "linear", spatial=False, residual=True)
    assert not torch.allclose(residual(x), x)  # x + f(x), f not the zero map
    bn = WarpLayer(6, "linear", spatial=False, batch_norm=True)
    torch.testing.assert_close(bn(x).mean(0), torch.zeros(6), atol=1e-5, rtol=0)


def test_warp_stack_and_bad_options():
    assert len(warp_stack(4, depth=2, kind="conv3x3", batch_norm=True, residual=True)) == 2
    with pytest.raises(ValueError, match="unknown warp kind"):
        WarpLayer(4, "quadratic")
    with pytest.raises(ValueError, match="feature maps"):
        WarpLayer(4, "conv3x3", spatial=False)
    with pytest.raises(ValueError, match="activation"):
        WarpLayer(4, activation="swish")


def test_user_module_split_is_explicit_and_inspectable():
    net = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
                        nn.Linear(4, 2))
    model = WarpedModel(net, warps=["1"])
    assert model.warp_names == ("1.0.weight", "1.0.bias")
    assert model.task_names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert model.task_spec.numel == 3 * 4 + 4 + 4 * 2 + 2
    assert "warp φ" in model.describe() and "task θ" in model.describe()
    with pytest.raises(ValueError, match="no submodule named"):
        WarpedModel(net, warps=["5"])
    with pytest.raises(ValueError, match="no task parameters"):
        WarpedModel(nn.Sequential(nn.Linear(2, 2)), warps=["0"])


def test_functional_forward_matches_module_and_mutates_nothing():
    torch.manual_seed(0)
    model = conv4(5, filters=8)
    x = torch.randn(3, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theta = model.init_theta() + 0.01 * torch.randn(model.task_spec.numel)
    out = model(x, theta)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    model.load_theta(theta)
    torch.testing.assert_close(out, model.module(x))


def test_user_batch_norm_buffers_are_not_leaked_by_functional_forward():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.Linear(4, 1))
    model = WarpedModel(net, warps=["2"])
    running = net[1].running_mean.clone()
    model(torch.randn(10, 3) + 5.0, model.init_theta())
    assert torch.equal(net[1].running_mean, running)


@pytest.mark.parametrize(("image_size", "filters"), [(28, 64), (84, 128)])
def test_conv4_shapes_and_split(image_size, filters):
    model = conv4(5, in_channels=3 if image_size == 84 else 1, image_size=image_size,
                  filters=filters)
    x = torch.randn(2, 3 if image_size == 84 else 1, image_size, image_size)
    assert model(x, model.init_theta()).shape == (2, 5)
    assert {n.split(".")[0] for n in model.warp_names} == {"warp1", "warp2", "warp3", "warp4"}
    assert not any(n.startswith("head") for n in model.warp_names)  # the head is not warped
    assert conv4(5, warp=None).warp_names == ()


def test_mlp_and_lstm_learners():
    model = mlp()
    assert model(torch.randn(7, 1), model.init_theta()).shape == (7, 1)
    assert {n.split(".")[0] for n in model.warp_names} == {"warp1", "warp2"}
    lstm = warped_lstm(17, 5, hidden_size=100)
    y, (h, c) = lstm(torch.randn(6, 4, 17), lstm.init_theta())
    assert y.shape == (6, 4, 5) and h.shape == (4, 100) and c.shape == (4, 100)
    assert all(n.startswith("warp.") for n in lstm.warp_names)
    assert "recurrent_map.weight" in lstm.task_names
    # the recurrence really runs through the warp: changing φ changes the output
    phi = {n: p + 0.5 for n, p in lstm.warp_parameters().items()}
    y2, _ = lstm(torch.randn(6, 4, 17).zero_() + 1, lstm.init_theta(), phi)
    y1, _ = lstm(torch.randn(6, 4, 17).zero_() + 1, lstm.init_theta())
    assert not torch.allclose(y1, y2)


def test_param_spec_round_trip():
    tensors = {"a": torch.randn(2, 3), "b": torch.randn(4)}
    spec = ParamSpec.of(tensors)
    flat = spec.flatten(tensors)
    assert flat.shape == (10,)
    back = spec.unflatten(flat)
    for k in tensors:
        assert torch.equal(back[k], tensors[k])
    assert spec.segment_ids().tolist() == [0] * 6 + [1] * 4
