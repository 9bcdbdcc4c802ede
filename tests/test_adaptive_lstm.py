"""The adaptive LSTM (the paper's warped maze agent): the plain LSTM at initialisation, its
gradients against finite differences and a slow per-step reference, a live modulation, and
its warp stepping only every ``warp_every`` episodes."""

import pytest
import torch

from warpgrad import adaptive_lstm, warped_lstm
from warpgrad.experiments.maze import MazeConfig
from warpgrad.rl import A2C, EpisodeTrainer, MazeEnv, make_policy, play_episode


def _perturbed_phi(model, scale=0.5, seed=1):
    """φ moved off its initialisation (the adaptation's zeros included), float64."""
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
            for n, p in model.warp_parameters().items()}


def _reference(x, state, p):
    """The adaptive LSTM written out step by step from its equations, on named tensors."""
    h, c = state
    outputs = []
    for x_t in x:
        z = torch.tanh(x_t @ p["projection.input.weight"].T + p["projection.input.bias"]
                       + h @ p["projection.hidden.weight"].T)
        d = 1 + z @ p["adaptation.weight"].T + p["adaptation.bias"]
        hidden = h.shape[1]
        d_x, d_h = d[:, :4 * hidden], d[:, 4 * hidden:]
        gates = (d_h * (h @ p["recurrent_map.weight"].T)
                 + d_x * (x_t @ p["input_map.weight"].T) + p["input_map.bias"])
        i = torch.sigmoid(gates[:, :hidden])
        f = torch.sigmoid(gates[:, hidden:2 * hidden])
        g = torch.tanh(gates[:, 2 * hidden:3 * hidden])
        o = torch.sigmoid(gates[:, 3 * hidden:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        outputs.append(h @ p["head.weight"].T + p["head.bias"])
    return torch.stack(outputs), (h, c)


def test_at_initialisation_it_is_the_plain_lstm_of_the_same_theta():
    torch.manual_seed(0)
    plain = warped_lstm(17, 5, hidden_size=12, warp=None)
    adaptive = adaptive_lstm(17, 5, hidden_size=12, adapt_size=4)
    assert adaptive.task_names == plain.task_names  # θ of one loads into the other
    adaptive.load_theta(plain.init_theta())
    x = torch.randn(7, 3, 17)
    state = (torch.randn(3, 12), torch.randn(3, 12))
    y_plain, (h_plain, c_plain) = plain(x, None, None, state)
    y, (h, c) = adaptive(x, None, None, state)
    torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, c_plain, rtol=1e-5, atol=1e-6)
    assert y.shape == (7, 3, 5) and h.shape == c.shape == (3, 12)
    # the agents: under one seed, "warp" and "l2rl" draw the same θ and compute the same
    torch.manual_seed(3)
    warp = make_policy("warp", 10)
    torch.manual_seed(3)
    l2rl = make_policy("l2rl", 10)
    assert torch.equal(warp.init_theta(), l2rl.init_theta())
    obs = torch.rand(20, 4, 17)
    torch.testing.assert_close(warp(obs)[0], l2rl(obs)[0], rtol=1e-5, atol=1e-6)


def test_theta_and_phi_split_and_bad_sizes():
    policy = make_policy("warp", 8, warp_hidden=3)
    assert set(policy.warp_names) == {"projection.input.weight", "projection.input.bias",
                                      "projection.hidden.weight", "adaptation.weight",
                                      "adaptation.bias"}
    assert set(policy.task_names) == {"input_map.weight", "input_map.bias",
                                      "recurrent_map.weight", "head.weight", "head.bias"}
    assert policy.warp_parameters()["projection.input.weight"].shape == (3, 17)
    assert policy.warp_parameters()["adaptation.weight"].shape == (8 * 8, 3)
    assert make_policy("warp-recurrence", 8).warp_names[0].startswith("warp.")
    with pytest.raises(ValueError, match="warp_hidden must be at least 1"):
        make_policy("warp", 8, warp_hidden=0)
    with pytest.raises(ValueError, match="adapt_size must be at least 1"):
        adaptive_lstm(3, 2, adapt_size=0)
    with pytest.raises(ValueError, match="warp_hidden must be at least 1"):
        MazeConfig(warp_hidden=0)
    assert MazeConfig(method="warp-recurrence").method == "warp-recurrence"


def test_forward_and_gradients_match_a_slow_reference_and_finite_differences():
    torch.manual_seed(0)
    model = adaptive_lstm(3, 2, hidden_size=4, adapt_size=2).double()
    phi = _perturbed_phi(model)  # modulations away from 1, so every φ is exercised
    theta = model.init_theta().detach().requires_grad_()
    phi = {n: p.requires_grad_() for n, p in phi.items()}
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    state = (0.5 * torch.randn(2, 4, dtype=torch.float64),
             0.5 * torch.randn(2, 4, dtype=torch.float64))

    y, (h, c) = model(x, theta, phi, state)
    named = {**model.task_spec.unflatten(theta), **phi}
    y_ref, (h_ref, c_ref) = _reference(x, state, named)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)

    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum() + h.sum(), [theta, *phi.values()])
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + h_ref.sum(),
                                    [theta, *phi.values()])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
        assert g.abs().sum() > 0

    names = list(phi)

    def f(theta_, *phi_values):
        out, _ = model(x, theta_, dict(zip(names, phi_values)), state)
        return out

    assert torch.autograd.gradcheck(f, (theta, *phi.values()))


def test_the_modulation_is_live_and_phi_gets_gradient():
    torch.manual_seed(0)
    env = MazeEnv(3, 5, episode_length=6)
    env.reset(seed=0)
    policy = make_policy("warp", 8, warp_hidden=4)
    generator = torch.Generator().manual_seed(0)
    A2C().loss(play_episode(env, policy, generator))[0].backward()
    phi = policy.warp_parameters()
    # the adaptation starts at zero: it gets gradient at once; the projection behind it
    # only gets some once the adaptation has moved off zero
    assert phi["adaptation.weight"].grad.abs().sum() > 0
    assert phi["adaptation.bias"].grad.abs().sum() > 0
    assert phi["projection.input.weight"].grad.abs().sum() == 0
    with torch.no_grad():
        phi["adaptation.weight"].normal_(0, 0.1)
    policy.zero_grad(set_to_none=True)
    A2C().loss(play_episode(env, policy, generator))[0].backward()
    for name in ("projection.input.weight", "projection.input.bias",
                 "projection.hidden.weight", "adaptation.weight", "adaptation.bias"):
        assert phi[name].grad.abs().sum() > 0, name
    # and a moved φ changes what the agent computes
    obs = torch.rand(10, 2, 17)
    moved = policy(obs)[0]
    with torch.no_grad():
        phi["adaptation.weight"].zero_()
    assert (policy(obs)[0] - moved).abs().max() > 1e-4


def test_the_warp_steps_only_every_30th_episode():
    torch.manual_seed(0)
    env = MazeEnv(2, 5, episode_length=4)
    env.reset(seed=0)
    policy = make_policy("warp", 6, warp_hidden=3)
    trainer = EpisodeTrainer(policy, A2C(), warp_every=30)
    assert trainer.warp_every == 30 and len(trainer.warp_params) == 5
    start = {n: p.detach().clone() for n, p in policy.warp_parameters().items()}
    generator = torch.Generator().manual_seed(0)
    for episode in range(1, 31):
        theta = policy.init_theta().detach().clone()
        trainer.update(play_episode(env, policy, generator))
        assert not torch.equal(policy.init_theta(), theta)  # θ moves every episode
        now = policy.warp_parameters()
        if episode < 30:
            assert all(torch.equal(now[n], start[n]) for n in start), episode
            assert now["adaptation.weight"].grad.abs().sum() > 0  # accumulating
    assert not torch.equal(now["adaptation.weight"], start["adaptation.weight"])
    assert all(p.grad is None for p in now.values())  # the accumulator is cleared
