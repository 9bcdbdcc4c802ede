"""MetaLearner: the regimes, the joint updates, checkpoint state."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import regression_task, tiny_warped_mlp
from warpgrad import Leap, MetaLearner, WarpGrad, adapt, make_learner
from warpgrad.algorithms import MAML


def _phi_vector(model):
    return torch.cat([p.detach().flatten() for p in model.warp_parameters().values()])


class _Keep:
    needs_final_loss = False

    def __init__(self):
        self.records = []

    def observe(self, record):
        self.records.append(record)


def _expected_warp_gradient(model, tasks, objective, lr, steps, chosen=None):
    """Mean of the point-wise meta-gradients over every point of every task (or over the
    ``chosen[i]`` steps of task i), computed point by point from independently recorded
    trajectories (full-batch tasks: no sampling)."""
    learner = MetaLearner(model, F.mse_loss, steps=steps, warp=objective, inner_lr=lr)
    total, count = 0.0, 0
    for i, task in enumerate(tasks):
        keep = _Keep()
        adapt(model, model.init_theta(), task, F.mse_loss, learner.optimizer, steps,
              observers=[keep])
        points = [p for p in keep.records if chosen is None or p.step in chosen[i]]
        for p in points:
            batches = task.warp_batches(p.step)
            loss = objective.point_loss(model, F.mse_loss, learner.optimizer, p.theta, p.state,
                                        *batches)
            grads = torch.autograd.grad(loss, list(model.warp_parameters().values()))
            total = total + torch.cat([g.flatten() for g in grads])
            count += 1
    return total / count


@pytest.mark.parametrize("regime", ["online", "offline"])
def test_one_meta_step_moves_phi_by_the_mean_meta_gradient(regime):
    tasks = [regression_task(s) for s in range(3)]
    steps, lr = 3, 0.4
    model = tiny_warped_mlp()
    objective = WarpGrad("exact", regime, points_per_update=len(tasks) * (steps + 1))
    expected = _expected_warp_gradient(model, tasks, objective, lr, steps)
    before = _phi_vector(model)
    learner = MetaLearner(model, F.mse_loss, steps=steps, warp=objective, inner_lr=lr,
                          warp_lr=1.0)
    stats = learner.meta_step(tasks)
    torch.testing.assert_close(before - _phi_vector(model), expected)
    assert "warp_loss" in stats


@pytest.mark.parametrize("regime", ["online", "offline"])
def test_a_random_fraction_of_points_gives_the_mean_meta_gradient_of_those(regime):
    """point_fraction: each task contributes its own random subset of trajectory points,
    drawn from the learner's generator, and φ moves by the mean meta-gradient over them."""
    tasks = [regression_task(s) for s in range(3)]
    steps, lr = 5, 0.4
    model = tiny_warped_mlp()
    objective = WarpGrad("exact", regime, point_fraction=0.5, points_per_update=9)
    assert objective.points_per_task(steps) == 3  # half of θ_0..θ_5
    generator = torch.Generator().manual_seed(7)  # the learner's, replayed
    chosen = [objective.sample_steps(steps, generator) for _ in tasks]
    assert all(len(c) == 3 and c <= set(range(steps + 1)) for c in chosen)
    assert len(set(chosen)) > 1  # each task draws its own subset
    expected = _expected_warp_gradient(model, tasks, objective, lr, steps, chosen)
    everything = _expected_warp_gradient(model, tasks, WarpGrad("exact", regime), lr, steps)
    assert not torch.allclose(expected, everything)  # really a subsample
    before = _phi_vector(model)
    learner = MetaLearner(model, F.mse_loss, steps=steps, warp=objective, inner_lr=lr,
                          warp_lr=1.0, seed=7)
    learner.meta_step(tasks)
    torch.testing.assert_close(before - _phi_vector(model), expected)
    with pytest.raises(ValueError, match="point_fraction"):
        WarpGrad(point_fraction=0.0)
    # with stride: the fraction is of the strided points (θ_0, θ_2, θ_4, θ_5)
    strided = WarpGrad(stride=2, point_fraction=0.5)
    assert strided.sample_steps(5, torch.Generator().manual_seed(0)) <= {0, 2, 4, 5}
    assert strided.points_per_task(5) == 2


def test_offline_makes_one_warp_update_per_point_mini_batch():
    tasks = [regression_task(s) for s in range(2)]
    model = tiny_warped_mlp()
    learner = MetaLearner(model, F.mse_loss, steps=4, warp=WarpGrad(points_per_update=3,
                                                                    epochs=2), inner_lr=0.1)
    calls = []
    original = learner.warp_optimizer.step
    learner.warp_optimizer.step = lambda: calls.append(1) or original()
    learner.meta_step(tasks)
    assert len(calls) == 2 * 4  # 10 points in mini-batches of 3 → 4 updates, 2 epochs


def test_leap_updates_only_the_initialisation_and_warp_only_phi():
    tasks = [regression_task(s) for s in range(2)]
    model = tiny_warped_mlp()
    theta0, phi = model.init_theta().detach().clone(), _phi_vector(model)
    make_learner("leap", tiny_warped_mlp(), F.mse_loss, steps=3)  # needs no warps itself
    learner = MetaLearner(model, F.mse_loss, steps=3, init=Leap(), inner_lr=0.3, init_lr=0.5)
    learner.meta_step(tasks)
    assert torch.equal(_phi_vector(model), phi)
    # θ_0 moved by −lr × the mean of the tasks' Leap gradients
    grads = []
    for task in tasks:
        observer = Leap().observer()
        adapt(model, theta0, task, F.mse_loss, learner.optimizer, 3, observers=[observer])
        grads.append(observer.gradient)
    torch.testing.assert_close(model.init_theta().detach(), theta0 - 0.5 * sum(grads) / 2)

    model = tiny_warped_mlp()
    theta0 = model.init_theta().detach().clone()
    MetaLearner(model, F.mse_loss, steps=3, warp=WarpGrad(), inner_lr=0.3).meta_step(tasks)
    assert torch.equal(model.init_theta().detach(), theta0)
    assert not torch.equal(_phi_vector(model), phi)


def test_meta_sgd_learns_the_inner_learning_rate_through_maml():
    model = tiny_warped_mlp()
    learner = MetaLearner(model, F.mse_loss, steps=2, init=MAML(), learn_lr=True,
                          granularity="element", inner_lr=0.1)
    before = learner.optimizer.lr.detach().clone()
    learner.meta_step([regression_task(0)])
    assert not torch.equal(learner.optimizer.lr.detach(), before)


def test_state_dict_round_trip_reproduces_the_next_step():
    tasks = [regression_task(s, batch_size=4, meta_split="train") for s in range(2)]

    def fresh():
        return make_learner("warp-leap", tiny_warped_mlp(), F.mse_loss, steps=3,
                            meta_optimizer="adam", seed=5)

    a = fresh()
    a.meta_step(tasks)
    b = fresh()
    b.load_state_dict(a.state_dict())
    assert a.meta_step(tasks) == b.meta_step(tasks)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_bad_configurations_fail_clearly():
    from warpgrad import mlp

    with pytest.raises(ValueError, match="unknown method"):
        make_learner("warp-sgd", tiny_warped_mlp(), F.mse_loss, steps=2)
    with pytest.raises(ValueError, match="needs a model with warp layers"):
        make_learner("warp-leap", mlp(warp=None), F.mse_loss, steps=2)
    with pytest.raises(ValueError, match="steps"):
        MetaLearner(tiny_warped_mlp(), F.mse_loss, steps=0)
    with pytest.raises(ValueError, match="at least one task"):
        make_learner("leap", tiny_warped_mlp(), F.mse_loss, steps=2).meta_step([])


@pytest.mark.parametrize("variant", ["exact", "first-order"])
@pytest.mark.parametrize("learn_lr", [False, True])
def test_online_shared_step_equals_a_fresh_step_on_full_batches(variant, learn_lr):
    """With full-batch tasks the adaptation's own step at θ_k is the step a fresh inner batch
    would take, so Algorithm 1's shared step must give the same update of φ (and of a learned
    learning rate), while skipping one forward+backward per point."""
    tasks = [regression_task(s) for s in range(2)]
    results = []
    for share in (False, True):
        model = tiny_warped_mlp()
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        learner = MetaLearner(model, F.mse_loss, steps=3, init=Leap(), inner_lr=0.3,
                              learn_lr=learn_lr, warp_lr=1.0,
                              warp=WarpGrad(variant, "online", share_step=share))
        learner.meta_step(tasks)
        after = torch.cat([p.detach().flatten()
                           for p in (*model.parameters(), *learner.optimizer.parameters())])
        results.append(after)
        assert (after[: len(before)] - before).abs().max() > 1e-3
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)


def test_shared_step_differs_on_mini_batches_and_needs_the_online_regime():
    tasks = [regression_task(s, batch_size=3) for s in range(2)]
    phis = []
    for share in (False, True):
        model = tiny_warped_mlp()
        MetaLearner(model, F.mse_loss, steps=3, inner_lr=0.3, warp_lr=1.0, seed=0,
                    warp=WarpGrad("exact", "online", share_step=share)).meta_step(tasks)
        phis.append(_phi_vector(model))
    assert not torch.allclose(phis[0], phis[1])  # other batches, other (valid) samples
    with pytest.raises(ValueError, match="online"):
        WarpGrad("exact", "offline", share_step=True)
    # MAML differentiates through the adaptation; the shared exact step's graph would then
    # reach back through θ_k, which WarpGrad holds constant
    with pytest.raises(ValueError, match="share_step"):
        make_learner("warp-maml", tiny_warped_mlp(), F.mse_loss, steps=2,
                     warp=WarpGrad("exact", "online", share_step=True))
    make_learner("warp-maml", tiny_warped_mlp(), F.mse_loss, steps=2,
                 warp=WarpGrad("first-order", "online", share_step=True))  # detached: fine


@pytest.mark.parametrize("regime", ["online", "offline"])
def test_values_read_back_per_meta_step_do_not_grow_with_the_steps(regime):
    """Each value read back to Python (``.item()``, ``float()``, an ``if`` on a tensor) makes
    a GPU's host wait for the device: a meta-step reads its losses once at the end, not once
    per point or step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Reads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    counts = {}
    for steps in (2, 6):
        learner = make_learner("warp-leap", tiny_warped_mlp(), F.mse_loss, steps=steps,
                               inner_lr=0.1, seed=0, warp=WarpGrad("first-order", regime))
        tasks = [regression_task(s) for s in range(2)]
        with Reads():
            Reads.count = 0
            stats = learner.meta_step(tasks)
        counts[steps] = Reads.count
        assert stats["warp_loss"] > 0
    assert counts[2] == counts[6] <= 2, counts
