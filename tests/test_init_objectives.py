"""Leap, Reptile and MAML gradients for θ_0 against hand computation and finite differences."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import finite_difference, regression_task, tiny_warped_mlp
from warpgrad import MAML, InnerSGD, Leap, Reptile, Task, WarpedModel, adapt
from warpgrad.algorithms import TaskRun
from warpgrad.engine.adapt import StepRecord


def _two_parameter_problem():
    """f(x; w) = w0 * x0 + w1 * x1: a 2-parameter learner with a quadratic loss."""
    net = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0]]))
    model = WarpedModel(net)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64)
    return model, Task(x, y, x, y)


def _run(objective, model, task, steps, lr=0.1):
    opt = InnerSGD(model.task_spec, lr, dtype=torch.float64)
    theta0 = model.init_theta().detach().requires_grad_(objective.differentiable)
    observer = objective.observer()
    result = adapt(model, theta0, task, F.mse_loss, opt, steps,
                   observers=[observer] if observer else [], create_graph=objective.differentiable)
    run = TaskRun(model, F.mse_loss, opt, task, theta0, result, None, 1.0)
    return objective.task_gradient(run, observer)


def _manual_path(model, task, steps, lr=0.1):
    """Hand-rolled SGD on the 2-parameter problem: points, losses and gradients."""
    w = model.init_theta().detach().clone()
    x, y = task.x_train, task.y_train
    points, losses, grads = [], [], []
    for _ in range(steps + 1):
        residual = x @ w - y.squeeze(1)
        points.append(w.clone())
        losses.append((residual ** 2).mean())
        grads.append(2 * x.T @ residual / len(x))
        w = w - lr * grads[-1]
    return points, losses, grads


def test_leap_without_loss_dimension_is_the_sum_of_normalised_segments():
    model, task = _two_parameter_problem()
    grad = _run(Leap(loss_dimension=False), model, task, steps=3)
    points, _, _ = _manual_path(model, task, 3)
    expected = sum((points[k] - points[k + 1]) / (points[k] - points[k + 1]).norm()
                   for k in range(3))
    torch.testing.assert_close(grad, expected)
    # three unit vectors: the gradient's norm is at most 3 and here all point the same way
    assert 2.5 < grad.norm() <= 3.0 + 1e-9


def test_leap_energy_variant_is_the_plain_sum_of_segments():
    model, task = _two_parameter_problem()
    grad = _run(Leap(loss_dimension=False, norm=False), model, task, steps=3)
    points, _, _ = _manual_path(model, task, 3)
    torch.testing.assert_close(grad, points[0] - points[3])


def test_leap_with_loss_dimension_matches_hand_computation():
    model, task = _two_parameter_problem()
    grad = _run(Leap(), model, task, steps=3)
    points, losses, grads = _manual_path(model, task, 3)
    expected = torch.zeros(2, dtype=torch.float64)
    for k in range(3):
        d_loss = losses[k + 1] - losses[k]
        d_loss = -d_loss.abs()  # stabiliser; the loss falls here anyway
        segment = points[k] - points[k + 1] - d_loss * grads[k]
        length = math.sqrt((points[k + 1] - points[k]).pow(2).sum() + d_loss ** 2)
        expected += segment / length
    torch.testing.assert_close(grad, expected)


def test_leap_stabiliser_flips_a_loss_increase():
    """With a learning rate large enough to overshoot, the loss rises; the stabiliser must
    treat the rise as a fall (sign of Δf flipped), unlike the raw formula."""
    model, task = _two_parameter_problem()
    points, losses, grads = _manual_path(model, task, 1, lr=1.2)
    assert losses[1] > losses[0]
    stable = _run(Leap(), model, task, steps=1, lr=1.2)
    raw = _run(Leap(stabilizer=False), model, task, steps=1, lr=1.2)
    d_loss = losses[1] - losses[0]
    length = math.sqrt((points[1] - points[0]).pow(2).sum() + d_loss ** 2)
    torch.testing.assert_close(stable, (points[0] - points[1] + d_loss * grads[0]) / length)
    torch.testing.assert_close(raw, (points[0] - points[1] - d_loss * grads[0]) / length)


def test_reptile_gradient_is_start_minus_end():
    model, task = _two_parameter_problem()
    grad = _run(Reptile(), model, task, steps=4)
    points, _, _ = _manual_path(model, task, 4)
    torch.testing.assert_close(grad, points[0] - points[4])


def test_maml_matches_finite_differences_through_all_steps():
    model = tiny_warped_mlp()
    task = regression_task()
    steps, lr = 3, 0.3
    grad = _run(MAML(), model, task, steps, lr)
    opt = InnerSGD(model.task_spec, lr, dtype=torch.float64)
    theta0 = model.init_theta().detach().clone()

    def query_loss():
        theta_k = adapt(model, theta0, task, F.mse_loss, opt, steps).theta
        return F.mse_loss(model(task.x_test, theta_k), task.y_test)

    (reference,) = finite_difference(query_loss, [theta0])
    torch.testing.assert_close(grad, reference, atol=1e-7, rtol=1e-5)


def test_first_order_maml_is_the_query_gradient_at_the_end():
    model = tiny_warped_mlp()
    task = regression_task()
    grad = _run(MAML(first_order=True), model, task, 3, 0.3)
    opt = InnerSGD(model.task_spec, 0.3, dtype=torch.float64)
    theta_k = adapt(model, model.init_theta(), task, F.mse_loss, opt, 3).theta
    theta_k.requires_grad_()
    (expected,) = torch.autograd.grad(F.mse_loss(model(task.x_test, theta_k), task.y_test),
                                      theta_k)
    torch.testing.assert_close(grad, expected)
    second = _run(MAML(), model, task, 3, 0.3)
    assert (grad - second).norm() > 1e-3 * second.norm()  # the second-order terms are real


def test_leap_segment_of_zero_length_adds_nothing():
    """Where θ and the loss do not move, the normalised segment is zero, not NaN (it divides
    by 1 there, chosen on the device: no host-device sync)."""
    observer = Leap().observer()
    theta, grad = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
    for step, moved in enumerate((0.0, 0.0, 3.0)):
        observer.observe(StepRecord(step, theta + moved, None, torch.tensor(1.0 + moved), grad))
    # only the last segment moved: d = θ_1 - θ_2 - Δloss g_1 with the loss's rise of 3
    # counted as a fall (the stabiliser), over the length sqrt(|θ_1 - θ_2|² + Δloss²)
    expected = (torch.tensor([-3.0, -3.0]) + 3.0 * grad) / torch.tensor(27.0).sqrt()
    assert torch.allclose(observer.gradient, expected)


def _leap_records(steps: int, size: int = 5):
    """A made-up trajectory with its losses and gradients (float64), one row per point."""
    g = torch.Generator().manual_seed(0)
    thetas = torch.randn(steps + 1, size, generator=g, dtype=torch.float64)
    losses = torch.rand(steps + 1, generator=g, dtype=torch.float64)
    grads = torch.randn(steps, size, generator=g, dtype=torch.float64)
    return thetas, losses, grads


def _streamed_leap(leap, thetas, losses, grads, window_bytes, monkeypatch):
    import warpgrad.algorithms.leap as leap_module

    monkeypatch.setattr(leap_module, "WINDOW_BYTES", window_bytes)
    observer = leap.observer()
    shared = thetas.clone()  # records are rows (views) of one tensor, as in adapt_tasks
    for k in range(len(thetas)):
        observer.observe(StepRecord(k, shared[k], None, losses[k].clone(),
                                    grads[k] if k < len(grads) else None))
    shared.zero_()  # the caller reuses its memory: the observer must have kept its own
    return observer.gradient


def test_leap_sums_segments_the_same_in_windows_of_any_size(monkeypatch):
    """Segments are summed a window at a time (one batched computation instead of ~16
    operators per step); the window's size must not change the gradient, which must be the
    hand-computed sum of normalised segments with the stabiliser."""
    thetas, losses, grads = _leap_records(7)
    expected = torch.zeros(5, dtype=torch.float64)
    for k in range(7):
        d_loss = -(losses[k + 1] - losses[k]).abs()
        segment = thetas[k] - thetas[k + 1] - d_loss * grads[k]
        expected += segment / ((thetas[k] - thetas[k + 1]).pow(2).sum() + d_loss ** 2).sqrt()
    for window_bytes in (1, 2 * 2 * 5 * 8, 3 * 2 * 5 * 8, 10**9):  # 1, 2, 3, all points
        got = _streamed_leap(Leap(), thetas, losses, grads, window_bytes, monkeypatch)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    simple = _streamed_leap(Leap(loss_dimension=False), thetas, losses, grads, 1, monkeypatch)
    torch.testing.assert_close(simple, sum((thetas[k] - thetas[k + 1])
                                           / (thetas[k] - thetas[k + 1]).norm()
                                           for k in range(7)))


def test_leap_observer_dispatches_no_operator_per_step_within_a_window():
    """On a GPU every operator is a launch the host pays for: while a window fills, watching
    a step costs none; closing it costs a fixed number, whatever the window's length."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    costs = {}
    for steps in (4, 12):
        thetas, losses, grads = _leap_records(steps)
        records = [StepRecord(k, thetas[k].clone(), None, losses[k].clone(),
                              grads[k].clone() if k < steps else None)
                   for k in range(steps + 1)]
        observer = Leap().observer()
        with Count():
            Count.ops = 0
            for record in records:
                observer.observe(record)
            watching = Count.ops
            assert observer.gradient is not None
        assert watching == 0
        costs[steps] = Count.ops
    assert costs[4] == costs[12] < 30
