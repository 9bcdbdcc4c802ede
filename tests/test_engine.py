"""The inner-loop engine: SGD through the warped model, trajectories, the replay buffer."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import regression_task, tiny_warped_mlp
from warpgrad import InnerSGD, ReplayBuffer, adapt


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_adapt_matches_torch_optim_sgd(momentum):
    """Reference: the module itself trained by torch.optim.SGD on the task parameters."""
    model = tiny_warped_mlp()
    task = regression_task(batch_size=4, meta_split="train")
    opt = InnerSGD(model.task_spec, 0.2, momentum, dtype=torch.float64)
    result = adapt(model, model.init_theta(), task, F.mse_loss, opt, 5,
                   generator=torch.Generator().manual_seed(7))

    net = copy.deepcopy(model.module)
    params = dict(net.named_parameters())
    sgd = torch.optim.SGD([params[n] for n in model.task_names], lr=0.2, momentum=momentum)
    gen = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(5):
        x, y = task.train_batch(gen)
        sgd.zero_grad()
        loss = F.mse_loss(net(x), y)
        loss.backward()
        sgd.step()
        losses.append(loss.item())
    expected = model.task_spec.flatten({n: params[n] for n in model.task_names})
    torch.testing.assert_close(result.theta, expected.detach())
    torch.testing.assert_close(result.losses, torch.tensor(losses, dtype=torch.float64))
    assert losses[-1] < losses[0]


def test_adaptation_leaves_warp_and_init_untouched():
    model = tiny_warped_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = InnerSGD(model.task_spec, 0.5, dtype=torch.float64)
    result = adapt(model, model.init_theta(), regression_task(), F.mse_loss, opt, 10)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(result.theta, model.init_theta())
    assert all(p.grad is None for p in model.parameters())


def test_detached_adaptation_keeps_no_graph_and_differentiable_one_does():
    model = tiny_warped_mlp()
    opt = InnerSGD(model.task_spec, 0.5, dtype=torch.float64)
    theta0 = model.init_theta().detach().requires_grad_()
    detached = adapt(model, theta0, regression_task(), F.mse_loss, opt, 3)
    assert detached.theta.grad_fn is None
    live = adapt(model, theta0, regression_task(), F.mse_loss, opt, 3, create_graph=True)
    assert live.theta.grad_fn is not None


@pytest.mark.parametrize("on_disk", [False, True])
def test_buffer_records_the_whole_trajectory_with_optimiser_state(on_disk, tmp_path):
    model = tiny_warped_mlp()
    opt = InnerSGD(model.task_spec, 0.3, momentum=0.5, dtype=torch.float64)
    buffer = ReplayBuffer(2 * 5, model.task_spec.numel, with_state=True, dtype=torch.float64,
                          on_disk=on_disk, directory=tmp_path)
    seen = []

    class Spy:
        needs_final_loss = False

        def observe(self, record):
            seen.append(record)

    for i in range(2):
        adapt(model, model.init_theta(), regression_task(i), F.mse_loss, opt, 4,
              observers=[buffer.recorder(i), Spy()])
    assert len(buffer) == 10  # θ_0..θ_4 for each of two tasks
    points = buffer.gather(torch.arange(10))
    assert points.step.tolist() == [0, 1, 2, 3, 4] * 2
    assert points.task_index.tolist() == [0] * 5 + [1] * 5
    for i, record in enumerate(seen):
        assert torch.equal(points.thetas[i], record.theta)
        assert torch.equal(points.states[i], record.state)
    assert torch.count_nonzero(points.states[0]) == 0  # no velocity before the first step
    # the state really is the SGD velocity: θ_{k+1} = θ_k − α v_{k+1}
    torch.testing.assert_close(points.thetas[1] - points.thetas[2], 0.3 * points.states[2])
    with pytest.raises(RuntimeError, match="full"):
        buffer.add(points.thetas[0], None, 0, 0)
    if on_disk:
        assert buffer.memory_bytes == 0
        assert not list(tmp_path.iterdir())  # an anonymous file: nothing is left behind
        shuffled = torch.tensor([7, 2, 9])
        assert torch.equal(buffer.gather(shuffled).thetas, points.thetas[shuffled])
    else:
        assert buffer.memory_bytes == 2 * 10 * model.task_spec.numel * 8


def test_buffer_stride_subsamples_and_keeps_the_end_point():
    model = tiny_warped_mlp()
    opt = InnerSGD(model.task_spec, 0.3, dtype=torch.float64)
    buffer = ReplayBuffer(10, model.task_spec.numel, dtype=torch.float64)
    adapt(model, model.init_theta(), regression_task(), F.mse_loss, opt, 7,
          observers=[buffer.recorder(0, stride=3)])
    assert buffer.step[: len(buffer)].tolist() == [0, 3, 6, 7]


@pytest.mark.parametrize("on_disk", [False, True])
def test_half_precision_buffer_halves_memory_and_restores_dtype(on_disk):
    buffer = ReplayBuffer(4, 100, storage_dtype=torch.float16, on_disk=on_disk)
    theta = torch.randn(100)
    buffer.add(theta, None, 0, 0)
    assert buffer.memory_bytes == (0 if on_disk else 4 * 100 * 2)
    got = buffer.gather(torch.tensor([0])).thetas[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, theta, atol=1e-2, rtol=1e-3)
    assert torch.equal(got, theta.half().float())


def test_inner_sgd_granularities_and_errors():
    model = tiny_warped_mlp()
    for granularity, size in (("global", 1), ("tensor", 4), ("element", model.task_spec.numel)):
        opt = InnerSGD(model.task_spec, 0.1, learn_lr=True, granularity=granularity)
        assert opt.lr.shape == (size,) and opt.lr.requires_grad
    with pytest.raises(ValueError, match="positive"):
        InnerSGD(model.task_spec, 0.0)
    with pytest.raises(ValueError, match="momentum"):
        InnerSGD(model.task_spec, 0.1, momentum=1.5)
    with pytest.raises(ValueError, match="granularity"):
        InnerSGD(model.task_spec, 0.1, granularity="layer")
