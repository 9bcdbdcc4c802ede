"""The baselines on the shared engine: Meta-SGD, T-Net, fine-tuning, no meta-learning,
Reptile's schedule, the batch-norm policy, and MAML's memory against WarpGrad's."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import finite_difference, regression_task, tiny_warped_mlp
from warpgrad import MAML, InnerSGD, Task, WarpGrad, adapt, conv4, make_learner
from warpgrad.algorithms import FineTune, TaskRun


def _maml_gradients(model, task, opt, steps, extra):
    theta0 = model.init_theta().detach().requires_grad_()
    result = adapt(model, theta0, task, F.mse_loss, opt, steps, create_graph=True)
    run = TaskRun(model, F.mse_loss, opt, task, theta0, result, None, 1.0, tuple(extra))
    for p in extra:
        p.grad = None
    return MAML().task_gradient(run, None)


def _query_loss_after(model, task, opt, steps):
    theta = adapt(model, model.init_theta(), task, F.mse_loss, opt, steps).theta
    return F.mse_loss(model(task.x_test, theta), task.y_test)


def test_meta_sgd_learning_rate_gradient_matches_finite_differences():
    model, task = tiny_warped_mlp(), regression_task()
    opt = InnerSGD(model.task_spec, 0.2, learn_lr=True, granularity="element",
                   dtype=torch.float64)
    with torch.no_grad():  # distinct rates per entry, so a mix-up would show
        opt.lr.add_(0.05 * torch.rand(opt.lr.shape, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64))
    _maml_gradients(model, task, opt, 3, [opt.lr])
    (reference,) = finite_difference(lambda: _query_loss_after(model, task, opt, 3), [opt.lr])
    torch.testing.assert_close(opt.lr.grad, reference, atol=1e-7, rtol=1e-5)


def test_t_net_warp_gradient_goes_through_the_adaptation():
    model, task = tiny_warped_mlp(), regression_task()
    opt = InnerSGD(model.task_spec, 0.3, dtype=torch.float64)
    phi = list(model.warp_parameters().values())
    _maml_gradients(model, task, opt, 3, phi)
    reference = finite_difference(lambda: _query_loss_after(model, task, opt, 3), phi)
    for p, r in zip(phi, reference):
        torch.testing.assert_close(p.grad, r, atol=1e-7, rtol=1e-5)
    # and make_learner("t-net") wires it: φ moves, by MAML's gradient
    learner = make_learner("t-net", model, F.mse_loss, steps=3, inner_lr=0.3)
    before = [p.detach().clone() for p in phi]
    learner.meta_step([task])
    assert all(not torch.equal(b, p) for b, p in zip(before, phi))


def test_finetune_gradient_is_the_training_gradient_at_theta0():
    model, task = tiny_warped_mlp(), regression_task()
    learner = make_learner("finetune", model, F.mse_loss, steps=5, init_lr=0.5)
    net = copy.deepcopy(model.module)
    F.mse_loss(net(task.x_train), task.y_train).backward()
    expected = {n: p.detach() - 0.5 * p.grad for n, p in net.named_parameters()
                if n in model.task_names}
    stats = learner.meta_step([task])
    for name, p in model.task_parameters().items():
        torch.testing.assert_close(p.detach(), expected[name])
    assert stats == {}  # no adaptation happens while pretraining


def test_multi_headed_finetune_keeps_one_head_per_task_and_a_fresh_head_in_theta0():
    torch.manual_seed(0)
    model = conv4(4, filters=4, warp=None)
    gen = torch.Generator().manual_seed(0)

    def task(key):
        return Task(torch.rand(8, 1, 28, 28, generator=gen), torch.arange(8) % 4,
                    torch.rand(4, 1, 28, 28, generator=gen), torch.arange(4), key=key)

    tasks = [task("alpha"), task("beta")]
    objective = FineTune(head="head", head_lr=0.5)
    learner = make_learner("finetune", model, F.cross_entropy, steps=3, init=objective)
    head_before = model.module.head.weight.detach().clone()
    body_before = model.module.block1[0].weight.detach().clone()
    for _ in range(3):
        learner.meta_step(tasks)
    assert torch.equal(model.module.head.weight, head_before)  # θ_0's head stays fresh
    assert not torch.equal(model.module.block1[0].weight, body_before)  # the body learns
    assert set(objective.heads) == {"alpha", "beta"}
    assert not torch.equal(objective.heads["alpha"], objective.heads["beta"])
    restored = make_learner("finetune", conv4(4, filters=4, warp=None), F.cross_entropy,
                            steps=3, init=FineTune(head="head"))
    restored.load_state_dict(learner.state_dict())
    assert torch.equal(restored.init.heads["beta"], objective.heads["beta"])
    with pytest.raises(ValueError, match="needs tasks with a key"):
        learner.meta_step([task(None)])


def test_no_meta_learning_changes_nothing_but_still_adapts():
    model, task = tiny_warped_mlp(), regression_task()
    before = copy.deepcopy(model.state_dict())
    learner = make_learner("no-meta", model, F.mse_loss, steps=4, inner_lr=0.3)
    stats = learner.meta_step([task])
    assert stats["adapt_loss_last"] < stats["adapt_loss_first"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_reptile_outer_step_size_is_annealed_linearly():
    learner = make_learner("reptile", tiny_warped_mlp(), F.mse_loss, steps=2, init_lr=1.0,
                           init_lr_anneal=4)
    rates = []
    for _ in range(5):
        rates.append(learner.init_optimizer.param_groups[0]["lr"])
        learner.meta_step([regression_task()])
    assert rates == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    theta = learner.model.init_theta().detach().clone()
    learner.meta_step([regression_task()])  # a step at rate 0 leaves θ_0 in place
    assert torch.equal(learner.model.init_theta().detach(), theta)


def test_running_batch_norm_statistics_are_per_task_and_used_at_evaluation():
    torch.manual_seed(0)
    model = conv4(3, filters=4, warp=None, batch_norm="running")
    gen = torch.Generator().manual_seed(1)

    def task(shift):
        return Task(torch.rand(6, 1, 28, 28, generator=gen) + shift, torch.arange(6) % 3,
                    torch.rand(3, 1, 28, 28, generator=gen) + shift, torch.arange(3))

    a, b = task(5.0), task(0.0)
    learner = make_learner("no-meta", model, F.cross_entropy, steps=3)
    alone = learner.evaluate(b)
    learner.evaluate(a)  # a very different task in between must not change b's result
    assert learner.evaluate(b) == alone
    assert torch.equal(model.module.block1[2].running_mean, torch.zeros(4))  # untouched
    batch_stats = make_learner("no-meta", conv4(3, filters=4, warp=None), F.cross_entropy,
                               steps=3)
    batch_stats.model.load_state_dict(model.state_dict(), strict=False)
    assert batch_stats.evaluate(b)["test_loss"] != alone["test_loss"]
    # the batched WarpGrad path falls back to one point at a time with running statistics
    warped = conv4(3, filters=4, batch_norm="running")
    warp_learner = make_learner("warp-leap", warped, F.cross_entropy, steps=2,
                                warp=WarpGrad(points_per_update=3, batched=True))
    assert "warp_loss" in warp_learner.meta_step([a, b])


def _graph_size(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_maml_graph_grows_with_steps_and_warpgrad_graph_does_not():
    model, task = tiny_warped_mlp(), regression_task()
    opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    maml, warp = {}, {}
    batches = ((task.x_train, task.y_train), [(task.x_test, task.y_test)])
    for steps in (2, 8):
        theta0 = model.init_theta().detach().requires_grad_()
        end = adapt(model, theta0, task, F.mse_loss, opt, steps, create_graph=True).theta
        maml[steps] = _graph_size(F.mse_loss(model(task.x_test, end), task.y_test))
        point = adapt(model, theta0, task, F.mse_loss, opt, steps).theta
        warp[steps] = _graph_size(
            WarpGrad("exact").point_loss(model, F.mse_loss, opt, point, None, *batches))
    assert maml[8] > 3 * maml[2]
    assert warp[8] == warp[2]
