"""The accelerated backend's operations give the reference backend's numbers: WarpGrad's
loss after one step (``loss_after_step``, exact and first-order, inside and outside vmap)
and adaptation steps (``adaptation_step``, with and without a graph), float64, to 1e-10.
The reference side is an unconverted model (the reference backend and layers), the fast
side ``accel.convert`` of a copy of it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from warpgrad import WarpedModel, accel, conv4
from warpgrad.accel import AcceleratedBackend
from warpgrad.accel import backend as accel_backend
from warpgrad.algorithms import WarpGrad
from warpgrad.engine import InnerSGD
from warpgrad.engine.backend import REFERENCE, Backend
from warpgrad.tasks import Task

TOL = {"rtol": 1e-10, "atol": 1e-10}


def _pair(dtype=torch.float64, **kwargs) -> tuple[WarpedModel, WarpedModel]:
    """The reference Conv4 and a converted copy."""
    torch.manual_seed(0)
    reference = conv4(3, filters=4, **kwargs).to(dtype)
    fast = accel.convert(copy.deepcopy(reference))
    assert reference.backend is REFERENCE and isinstance(fast.backend, AcceleratedBackend)
    return reference, fast


def _images(seed: int, n: int = 9, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g, dtype=dtype), torch.arange(n) % 3


def _theta(model: WarpedModel, seed: int = 1, scale: float = 0.01) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = model.init_theta().detach()
    return theta + scale * torch.randn(theta.shape, generator=g, dtype=theta.dtype)


def _meta_parameters(model: WarpedModel, optimizer: InnerSGD) -> list[torch.Tensor]:
    return [*model.warp_parameters().values(), *optimizer.parameters()]


def _assert_all_close(ours: list, theirs: list, **tolerance) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a, b, **(tolerance or TOL))


def _spy_func_grad(monkeypatch) -> list[int]:
    """Counts the accelerated backend's calls of the accelerator's ``func_grad``."""
    calls: list[int] = []
    func_grad = accel_backend.func_grad
    monkeypatch.setattr(accel_backend, "func_grad",
                        lambda *args: calls.append(1) or func_grad(*args))
    return calls


# -- loss_after_step --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["exact", "first-order"])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_loss_after_step_outside_vmap(monkeypatch, variant, momentum):
    """The meta-loss at one point and its gradient in φ and the learned inner rate."""
    calls = _spy_func_grad(monkeypatch)
    inner, meta = _images(0), _images(1)
    results = []
    for model in _pair():
        optimizer = InnerSGD(model.task_spec, 0.1, momentum, learn_lr=True,
                             dtype=torch.float64)
        theta = _theta(model)
        state = None if not momentum else 0.1 * _theta(model, seed=2, scale=1.0)
        loss = WarpGrad(variant).point_loss(model, F.cross_entropy, optimizer, theta, state,
                                            inner, [meta])
        results.append([loss, *torch.autograd.grad(loss, _meta_parameters(model, optimizer))])
    # the exact step through the accelerator's func_grad, the first-order one by autograd
    assert bool(calls) == (variant == "exact")
    assert all(g.abs().sum() > 0 for g in results[0][1:])  # φ's and the rate's gradients
    _assert_all_close(results[1], results[0])


@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_loss_after_step_under_vmap(monkeypatch, variant):
    """Points in one ``torch.func.vmap`` (``WarpGrad(batched=True)``): the transform's path
    on both sides (the model's batch norm is exact under vmap)."""
    calls = _spy_func_grad(monkeypatch)
    vmaps: list[int] = []
    vmap = torch.func.vmap
    monkeypatch.setattr(torch.func, "vmap", lambda *a, **k: vmaps.append(1) or vmap(*a, **k))
    batches = [(_images(2 * i), [_images(2 * i + 1)]) for i in range(3)]
    results = []
    for model in _pair():
        optimizer = InnerSGD(model.task_spec, 0.1, learn_lr=True, dtype=torch.float64)
        thetas = torch.stack([_theta(model, seed=s) for s in range(3)])
        loss = WarpGrad(variant, batched=True)._batches_loss(
            model, F.cross_entropy, optimizer, thetas, None, batches)
        results.append([loss, *torch.autograd.grad(loss, _meta_parameters(model, optimizer))])
    assert len(vmaps) == 2  # it did run under vmap, both times
    assert calls  # inside the transform even the first-order step takes func_grad
    assert all(g.abs().sum() > 0 for g in results[0][1:])
    _assert_all_close(results[1], results[0])


def test_loss_after_step_of_the_backends_directly():
    """``loss_after_step`` on plain functions: the operation's meaning, nothing of a model.
    ``differentiable`` decides whether w's gradient flows through the step's gradient."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(5, generator=g, dtype=torch.float64)

    def task_loss(t):
        return torch.tanh(a @ (w * t)).square().sum()

    def step(t, grad):
        return t - 0.3 * grad

    def meta_loss(t):
        return (torch.sin(a @ t) * w).sum()

    by_variant = {}
    for differentiable in (True, False):
        results = []
        for backend in (Backend(), AcceleratedBackend()):
            loss = backend.loss_after_step(task_loss, step, meta_loss, theta,
                                           differentiable=differentiable)
            results.append([loss, *torch.autograd.grad(loss, w)])
        _assert_all_close(results[1], results[0], rtol=1e-12, atol=1e-12)
        by_variant[differentiable] = results[0][1]
    assert not torch.allclose(by_variant[True], by_variant[False])


def test_first_order_autograd_path_matches_the_functorch_path(monkeypatch):
    """Outside vmap the accelerated backend takes the first-order step's gradient with plain
    autograd, the reference backend with ``torch.func.grad``: float32, on the same
    (converted) layers."""
    calls = _spy_func_grad(monkeypatch)
    torch.manual_seed(0)
    model = accel.convert(conv4(3, filters=8))
    fast = model.backend
    g = torch.Generator().manual_seed(0)
    x = torch.rand(18, 1, 28, 28, generator=g)
    y = torch.arange(3).repeat_interleave(6)
    task = Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=8)
    optimizer = InnerSGD(model.task_spec, 0.1)
    theta = model.init_theta().detach() + 0.01
    objective = WarpGrad("first-order")
    batches = task.warp_batches(0, torch.Generator().manual_seed(0))
    grads = []
    for backend in (Backend(), fast):
        model.backend = backend
        model.zero_grad()
        objective.point_loss(model, F.cross_entropy, optimizer, theta, None, batches[0],
                             batches[1]).backward()
        grads.append([p.grad.clone() for p in model.warp_parameters().values()])
    assert not calls
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# -- adaptation_step --------------------------------------------------------------------------
MODES = {
    "detached": {},
    "create_graph": {"create_graph": True},
    "keep_grad_graph": {"keep_grad_graph": True},
    "warp_step": {"warp_step": True},
    "warp_step_kept": {"warp_step": True, "keep_grad_graph": True},
}


def _steps(model: WarpedModel, mode: str, momentum: float
           ) -> tuple[list[torch.Tensor | None], dict[str, torch.Tensor]]:
    """Two adaptation steps as ``adapt`` takes them: every output, the task's buffers after
    them, and the derivatives the mode keeps a graph for."""
    options = MODES[mode]
    graph = options.get("create_graph", False) or options.get("keep_grad_graph", False)
    optimizer = InnerSGD(model.task_spec, 0.1, momentum, learn_lr=True, dtype=torch.float64)
    theta = model.init_theta() if options.get("create_graph") else model.init_theta().detach()
    phi = None if graph else {n: p.detach() for n, p in model.warp_parameters().items()}
    state = optimizer.init_state(theta)
    buffers = model.task_buffers()
    out: list[torch.Tensor | None] = []
    for seed in (0, 1):
        step = model.backend.adaptation_step(model, F.cross_entropy, optimizer, theta, state,
                                             _images(seed), phi=phi, buffers=buffers,
                                             **options)
        assert step.loss.grad_fn is None
        assert step.grad.requires_grad == graph
        assert step.theta.requires_grad == options.get("create_graph", False)
        out += [step.loss, step.grad.detach(), step.theta.detach(),
                None if step.state is None else step.state.detach()]
        if options.get("keep_grad_graph"):  # WarpGrad's shared exact step differentiates it
            v = torch.linspace(-1, 1, step.grad.numel(), dtype=step.grad.dtype)
            out += torch.autograd.grad((step.grad * v).sum(),
                                       list(model.warp_parameters().values()))
        theta, state = step.theta, step.state
    out += list(buffers.values())
    if options.get("create_graph"):  # MAML differentiates θ_K in θ_0, φ and the rate
        meta = F.cross_entropy(model(*_images(2)[:1], theta), _images(2)[1])
        out += torch.autograd.grad(meta, [*model.module.parameters(), *optimizer.parameters()])
    return out, buffers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("momentum,batch_norm", [(0.0, "batch"), (0.5, "running")])
def test_adaptation_steps_equal_the_reference(mode, momentum, batch_norm):
    reference, fast = _pair(batch_norm=batch_norm)
    theirs, task_buffers = _steps(reference, mode, momentum)
    ours, _ = _steps(fast, mode, momentum)
    assert (theirs[2] - reference.init_theta().detach()).abs().max() > 1e-4  # it stepped
    _assert_all_close(ours, theirs)
    own = dict(fast.module.named_buffers())
    assert task_buffers.keys() == own.keys() and bool(own) == (batch_norm == "running")
    for name in (n for n in own if n.endswith("running_mean")):
        # the task's statistics moved, the model's did not
        assert not torch.equal(task_buffers[name], own[name])
        assert torch.equal(own[name], torch.zeros_like(own[name]))
