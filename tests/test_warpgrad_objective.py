"""WarpGrad's meta-objective: each variant against an independent reference."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import finite_difference, regression_task, tiny_warped_mlp
from warpgrad import InnerSGD, WarpedModel, WarpGrad, adapt, conv4
from warpgrad.engine import ReplayBuffer
from warpgrad.engine.buffer import Points
from warpgrad.tasks import Task


def _setup(momentum=0.0, seed=0):
    model = tiny_warped_mlp(seed)
    task = regression_task(seed)
    opt = InnerSGD(model.task_spec, 0.5, momentum, dtype=torch.float64)
    theta = model.init_theta().detach() + 0.1
    state = None if momentum == 0 else torch.full_like(theta, 0.05)
    batches = ((task.x_train, task.y_train), [(task.x_test, task.y_test)])
    return model, opt, theta, state, batches


def _phi(model):
    return list(model.warp_parameters().values())


def _grad(objective, model, opt, theta, state, batches):
    loss = objective.point_loss(model, F.mse_loss, opt, theta, state, *batches)
    return torch.autograd.grad(loss, _phi(model))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_exact_matches_finite_differences(momentum):
    model, opt, theta, state, batches = _setup(momentum)
    objective = WarpGrad("exact")
    grads = _grad(objective, model, opt, theta, state, batches)
    with torch.no_grad():
        reference = finite_difference(
            lambda: objective.point_loss(model, F.mse_loss, opt, theta, state, *batches),
            _phi(model))
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, atol=1e-8, rtol=1e-6)


def _naive_first_order(model, theta, lr, batches, step=True):
    """Explicit parameter copies and .backward(), the way the original code works."""
    net = copy.deepcopy(model.module)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, value in model.task_spec.unflatten(theta).items():
            params[name].copy_(value)
    (x, y), [(xm, ym)] = batches
    if step:
        F.mse_loss(net(x), y).backward()
        with torch.no_grad():
            for name in model.task_names:
                params[name] -= lr * params[name].grad
        net.zero_grad()
    F.mse_loss(net(xm), ym).backward()
    return [params[n].grad for n in model.warp_names]


def test_first_order_matches_naive_copy_implementation():
    model, opt, theta, state, batches = _setup()
    grads = _grad(WarpGrad("first-order"), model, opt, theta, state, batches)
    for g, r in zip(grads, _naive_first_order(model, theta, 0.5, batches)):
        torch.testing.assert_close(g, r)


def test_no_step_matches_loss_at_the_point_itself():
    model, opt, theta, state, batches = _setup()
    grads = _grad(WarpGrad("no-step"), model, opt, theta, state, batches)
    for g, r in zip(grads, _naive_first_order(model, theta, 0.5, batches, step=False)):
        torch.testing.assert_close(g, r)


def test_exact_differs_measurably_from_first_order():
    """The original code's silent detach made 'exact' equal to first-order; ours must not."""
    model, opt, theta, state, batches = _setup()
    exact = torch.cat([g.flatten() for g in _grad(WarpGrad("exact"), model, opt, theta, state,
                                                  batches)])
    first = torch.cat([g.flatten() for g in _grad(WarpGrad("first-order"), model, opt, theta,
                                                  state, batches)])
    relative = (exact - first).norm() / exact.norm()
    assert relative > 0.05


def test_learned_learning_rate_gets_the_exact_gradient():
    model, _, theta, state, batches = _setup()
    opt = InnerSGD(model.task_spec, 0.5, learn_lr=True, dtype=torch.float64)
    objective = WarpGrad("exact")
    loss = objective.point_loss(model, F.mse_loss, opt, theta, state, *batches)
    (grad,) = torch.autograd.grad(loss, [opt.lr])
    with torch.no_grad():
        (reference,) = finite_difference(
            lambda: objective.point_loss(model, F.mse_loss, opt, theta, state, *batches),
            [opt.lr])
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, reference, atol=1e-8, rtol=1e-6)


def test_meta_gradient_ignores_how_the_point_was_reached():
    """θ_k is a constant: a differentiable and a detached trajectory give the same φ-gradient,
    so φ's gradient never flows through more than the one step."""
    model = tiny_warped_mlp()
    task = regression_task()
    opt = InnerSGD(model.task_spec, 0.3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    live = adapt(model, model.init_theta(), task, F.mse_loss, opt, 4, create_graph=True,
                 generator=gen)
    assert live.theta.requires_grad  # carries the graph of 4 steps back to θ_0 and φ
    gen.manual_seed(0)
    dead = adapt(model, model.init_theta(), task, F.mse_loss, opt, 4, generator=gen)
    assert not dead.theta.requires_grad
    batches = ((task.x_train, task.y_train), [(task.x_test, task.y_test)])
    objective = WarpGrad("exact")
    g_live = _grad(objective, model, opt, live.theta, None, batches)
    g_dead = _grad(objective, model, opt, dead.theta, None, batches)
    for a, b in zip(g_live, g_dead):
        assert torch.equal(a, b)


def _filled_buffer(model, tasks, opt, steps, generator):
    buffer = ReplayBuffer(len(tasks) * (steps + 1), model.task_spec.numel,
                          with_state=opt.has_state, dtype=torch.float64)
    for i, task in enumerate(tasks):
        adapt(model, model.init_theta(), task, F.mse_loss, opt, steps,
              observers=[buffer.recorder(i)], generator=generator)
    return buffer


@pytest.mark.parametrize("variant", ["exact", "first-order", "no-step"])
def test_batched_points_match_one_at_a_time(variant):
    model = tiny_warped_mlp()
    tasks = [regression_task(s) for s in range(3)]
    opt = InnerSGD(model.task_spec, 0.3, momentum=0.5, dtype=torch.float64)
    buffer = _filled_buffer(model, tasks, opt, 3, torch.Generator().manual_seed(1))
    points = buffer.gather(torch.arange(len(buffer)))
    grads = {}
    for batched in (False, True):
        objective = WarpGrad(variant, batched=batched, chunk_size=5)
        loss = objective.points_loss(model, F.mse_loss, opt, points, tasks)
        grads[batched] = torch.autograd.grad(loss, _phi(model))
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _conv4_points(dtype: torch.dtype):
    """A Conv4 with batch norm in its warps, two tasks and the six buffer points of their
    two-step trajectories, all in ``dtype``."""
    torch.manual_seed(0)
    model = conv4(5, image_size=28, filters=8, warp="conv3x3", warp_batch_norm=True,
                  warp_activation="relu").to(dtype)
    gen = torch.Generator().manual_seed(0)
    tasks = [Task(torch.rand(10, 1, 28, 28, generator=gen, dtype=dtype), torch.arange(10) % 5,
                  torch.rand(5, 1, 28, 28, generator=gen, dtype=dtype), torch.arange(5),
                  batch_size=6, meta_split="train") for _ in range(2)]
    opt = InnerSGD(model.task_spec, 0.1, dtype=dtype)
    buffer = ReplayBuffer(6, model.task_spec.numel, dtype=dtype)
    for i, task in enumerate(tasks):
        adapt(model, model.init_theta(), task, F.cross_entropy, opt, 2,
              observers=[buffer.recorder(i)], generator=gen)
    return model, tasks, opt, buffer.gather(torch.arange(6))


def _points_meta_gradient(variant: str, batched: bool, model, tasks, opt, points):
    loss = WarpGrad(variant, batched=batched).points_loss(
        model, F.cross_entropy, opt, points, tasks, torch.Generator().manual_seed(3))
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, _phi(model))])


@pytest.mark.parametrize("variant", ["first-order", "exact"])
def test_batched_points_match_on_conv4_with_batch_norm(variant, monkeypatch):
    """vmap must keep each point's own batch statistics (BN over its own batch), for both
    variants: the library's batch-norm layers keep exact second-order gradients under vmap
    (see the next tests). In float64 the batched and looped meta-gradients are one
    computation to rounding."""
    calls = []
    vmap = torch.func.vmap
    monkeypatch.setattr(torch.func, "vmap", lambda *a, **k: calls.append(1) or vmap(*a, **k))
    case = _conv4_points(torch.float64)
    looped = _points_meta_gradient(variant, False, *case)
    assert not calls
    batched = _points_meta_gradient(variant, True, *case)
    assert calls  # really vmapped, not a loop behind batched=True
    torch.testing.assert_close(batched, looped, atol=1e-12, rtol=1e-9)


def test_batched_points_in_float32_are_as_accurate_as_one_at_a_time():
    """In float32 the batched meta-gradient differs from the looped one by rounding alone,
    whose size depends on the CPU's kernels (sums vectorised another way give other
    roundings). So the tolerance comes from the computation: against the same points,
    tasks and batches in float64, the batched result is no farther from the looped one than
    three times the looped one's own distance from float64."""
    model, tasks, opt, points = _conv4_points(torch.float32)
    looped = _points_meta_gradient("first-order", False, model, tasks, opt, points)
    batched = _points_meta_gradient("first-order", True, model, tasks, opt, points)
    wide_tasks = [Task(t.x_train.double(), t.y_train, t.x_test.double(), t.y_test,
                       batch_size=t.batch_size, meta_split=t.meta_split) for t in tasks]
    wide_points = Points(points.thetas.double(), None, points.task_index, points.step)
    truth = _points_meta_gradient("first-order", False, copy.deepcopy(model).double(),
                                  wide_tasks, InnerSGD(model.task_spec, 0.1,
                                                       dtype=torch.float64), wide_points)
    rounding = (looped.double() - truth).norm()
    assert rounding > 0  # float32 really rounds here
    assert (batched.double() - looped.double()).norm() <= 3 * rounding, (
        (batched - looped).norm().item(), rounding.item())


def test_exact_batched_objective_with_batch_norm_matches_finite_differences():
    """PyTorch's vmap gets the fused batch norm's second-order gradient wrong here (2e-3 off
    finite differences, float64; pytorch/functorch#534): batched=True, vmapped, must give
    the true exact gradient."""
    torch.manual_seed(0)
    model = conv4(3, filters=8, warp_blocks=(1,)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(18, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(6)
    task = Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=8)
    opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    thetas = torch.stack([model.init_theta().detach() + 0.01 * torch.randn(
        model.task_spec.numel, dtype=torch.float64) for _ in range(3)])
    points = Points(thetas, None, torch.zeros(3, dtype=torch.long), torch.arange(3))

    def loss() -> torch.Tensor:
        return WarpGrad("exact", batched=True).points_loss(
            model, F.cross_entropy, opt, points, [task], torch.Generator().manual_seed(1))

    weight = model.warp_parameters()["warp1.map.weight"]
    (grad,) = torch.autograd.grad(loss(), [weight])
    flat = weight.data.view(-1)
    for index in torch.randperm(flat.numel(), generator=g)[:4].tolist():
        original = flat[index].item()
        values = []
        for sign in (1, -1):
            flat[index] = original + sign * 1e-6
            values.append(loss().item())
        flat[index] = original
        fd = (values[0] - values[1]) / 2e-6
        assert abs(grad.view(-1)[index].item() - fd) < 1e-6 * max(1.0, abs(fd)), (index, fd)


def _batch_norm_second_order_gap(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """Relative gap between vmapped and looped per-sample computations through ``layer``
    (float64), shaped like the exact WarpGrad objective: per sample, the gradient of a loss
    with respect to the sample's own weight and bias (``torch.func.grad``, inside the
    vmap), turned into a scalar; then that scalar's gradient with respect to a parameter
    shared by all samples (a scale before the layer, as φ is), by autograd outside the
    vmap. Also compares the outputs."""
    g = torch.Generator().manual_seed(0)
    layer = layer.double()
    xs = torch.rand(4, *shape, generator=g, dtype=torch.float64)
    weights = torch.rand(4, shape[1], generator=g, dtype=torch.float64) + 0.5
    biases = torch.rand(4, shape[1], generator=g, dtype=torch.float64) - 0.5
    probe = torch.rand(*shape, generator=g, dtype=torch.float64)
    scale = (torch.rand(shape[1:], generator=g, dtype=torch.float64) + 0.5).requires_grad_()

    def forward(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x * scale,))

    def per_sample(x, w, b):
        loss = lambda w, b: (forward(x, w, b) * probe).pow(2).sum()  # noqa: E731
        dw, db = torch.func.grad(loss, argnums=(0, 1))(w, b)
        return (dw - w).pow(2).sum() + (db - b).pow(2).sum(), forward(x, w, b)

    vmapped = torch.func.vmap(per_sample)(xs, weights, biases)
    looped = [torch.stack(t) for t in zip(*(per_sample(*a) for a in zip(xs, weights, biases)))]
    gaps = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(vmapped, looped)]
    shared = [torch.autograd.grad(values[0].sum(), scale)[0] for values in (vmapped, looped)]
    gaps.append(((shared[0] - shared[1]).norm() / shared[1].norm()).item())
    return max(gaps)


def test_library_batch_norm_under_vmap_matches_the_fused_kernel_to_second_order():
    """Under vmap the library's batch-norm layers compute from primitive operators: the
    same values and second-order gradients as the fused kernel applied one sample at a
    time, for 2-d and 1-d batch norm. (PyTorch 2.13's own layers miss by a relative 1.07
    and 204 here: the bug this works around.)"""
    from warpgrad.models.batch_norm import BatchNorm1d, BatchNorm2d

    assert _batch_norm_second_order_gap(BatchNorm2d(3, track_running_stats=False),
                                        (5, 3, 4, 4)) < 1e-10
    assert _batch_norm_second_order_gap(BatchNorm1d(3, track_running_stats=False),
                                        (5, 3)) < 1e-10
    assert _batch_norm_second_order_gap(nn.BatchNorm2d(3, track_running_stats=False),
                                        (5, 3, 4, 4)) > 1e-3  # the bug it works around


def test_exact_batched_objective_falls_back_to_a_loop_for_fused_batch_norm():
    """A user's model with PyTorch's own batch norm keeps the one-at-a-time loop for the
    exact variant (vmap would get its second-order gradient wrong); first-order vmaps."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                        nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    model = WarpedModel(net)
    assert not WarpGrad("exact", batched=True)._vmap_safe(model)
    assert WarpGrad("first-order", batched=True)._vmap_safe(model)
    assert WarpGrad("exact", batched=True)._vmap_safe(conv4(3, warp_batch_norm=True))


def test_a_batched_objective_that_cannot_vmap_says_why_once():
    """batched=True falls back to one point at a time with a warning naming the reason,
    once per objective, and gives the loop's meta-loss."""
    import warnings

    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False),
                        nn.Linear(3, 2))
    model = WarpedModel(net, warps=["1"]).double()
    opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    tasks = [regression_task(s) for s in range(2)]
    buffer = _filled_buffer(model, tasks, opt, 2, torch.Generator().manual_seed(0))
    points = buffer.gather(torch.arange(len(buffer)))
    objective = WarpGrad("exact", batched=True)
    with pytest.warns(RuntimeWarning, match="one at a time: the exact variant of a model "
                                            "with PyTorch's own batch norm"):
        batched = objective.points_loss(model, F.mse_loss, opt, points, tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second call is silent
        objective.points_loss(model, F.mse_loss, opt, points, tasks)
    looped = WarpGrad("exact").points_loss(model, F.mse_loss, opt, points, tasks)
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)


def test_invalid_options_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="unknown WarpGrad variant"):
        WarpGrad("second-order")
    with pytest.raises(ValueError, match="regime"):
        WarpGrad(regime="sometimes")
    with pytest.raises(ValueError, match="stride"):
        WarpGrad(stride=0)


class _TwoSubtasks(Task):
    """A continual-learning-style task: the meta-loss covers the current and a past subset."""

    def warp_batches(self, step, generator=None):
        past = (self.x_test[:3], self.y_test[:3])
        current = (self.x_test[3:], self.y_test[3:])
        return (self.x_train, self.y_train), [current, past]


def test_meta_loss_averages_over_several_datasets():
    model, opt, theta, state, _ = _setup()
    base = regression_task()
    task = _TwoSubtasks(base.x_train, base.y_train, base.x_test, base.y_test)
    inner, metas = task.warp_batches(0)
    objective = WarpGrad("exact")
    both = objective.point_loss(model, F.mse_loss, opt, theta, state, inner, metas)
    each = [objective.point_loss(model, F.mse_loss, opt, theta, state, inner, [m])
            for m in metas]
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)
    assert not torch.allclose(each[0], each[1])
    # and the learner's online and offline regimes accept such tasks
    from warpgrad import MetaLearner

    for regime in ("online", "offline"):
        learner = MetaLearner(model, F.mse_loss, steps=2, warp=WarpGrad(regime=regime),
                              inner_lr=0.1)
        assert learner.meta_step([task])["warp_loss"] > 0
