"""Small models and tasks shared by the tests (float64 so finite differences are precise)."""

from __future__ import annotations

import torch
from torch import nn

from warpgrad import Task, WarpedModel


def tiny_warped_mlp(seed: int = 0, warp_activation: bool = True) -> WarpedModel:
    """2 → 3 → warp(3 → 3, tanh) → 2, float64. The warp is non-linear so the inner gradient
    depends on φ in a way first-order WarpGrad misses."""
    torch.manual_seed(seed)
    layers = [nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 3), nn.Tanh() if warp_activation
                                               else nn.Identity()), nn.Linear(3, 2)]
    model = WarpedModel(nn.Sequential(*layers), warps=["1"])
    return model.double()


def regression_task(seed: int = 0, n_train: int = 8, n_test: int = 6, batch_size=None,
                    meta_split="test") -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, 2, generator=g, dtype=torch.float64)
    w = torch.randn(2, 2, generator=g, dtype=torch.float64)
    y = torch.sin(x @ w)
    return Task(x[:n_train], y[:n_train], x[n_train:], y[n_train:], batch_size=batch_size,
                meta_split=meta_split)


def finite_difference(fn, params: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    """Central differences of the scalar ``fn()`` with respect to each tensor in ``params``
    (perturbed in place)."""
    grads = []
    for p in params:
        grad = torch.zeros_like(p)
        flat, gflat = p.data.view(-1), grad.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = fn().item()
            flat[i] = old - eps
            minus = fn().item()
            flat[i] = old
            gflat[i] = (plus - minus) / (2 * eps)
        grads.append(grad)
    return grads


def conv4_meta_gradients_both_ways(monkeypatch, module, variant: str, spy: list) -> list:
    """The meta-gradient in φ of one WarpGrad buffer point of a float64 Conv4-8 (5-way, 10
    glyph-sized images), with ``module.ENABLED`` (a fast path's switch) off, then on. Asserts
    that the path was taken (``spy`` got calls) exactly when it is on and ``variant`` is
    "exact", whose inner pass opens the second-order scope. Returns ``[off, on]``."""
    import torch.nn.functional as F

    from warpgrad import conv4
    from warpgrad.algorithms import WarpGrad
    from warpgrad.engine.inner_sgd import InnerSGD

    torch.manual_seed(0)
    model = conv4(5, filters=8).double()
    opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(10, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(10) % 5
    theta = model.init_theta().detach() + 0.01 * torch.randn(
        model.task_spec.numel, generator=g, dtype=torch.float64)
    objective = WarpGrad(variant)
    grads = []
    for enabled in (False, True):
        monkeypatch.setattr(module, "ENABLED", enabled)
        loss = objective.point_loss(model, F.cross_entropy, opt, theta, None, (x, y), [(x, y)])
        grads.append(torch.autograd.grad(loss, list(model.warp_parameters().values())))
        assert bool(spy) == (enabled and variant == "exact")
    return grads


def calls_of(monkeypatch, function: type) -> list[int]:
    """A list that gets an entry each time ``function.apply`` (an autograd function) runs."""
    calls: list[int] = []
    apply = function.apply
    monkeypatch.setattr(function, "apply",
                        staticmethod(lambda *args: calls.append(1) or apply(*args)))
    return calls


def maml_meta_gradients_both_ways(monkeypatch, module, spy: list, calls_per_step: int
                                  ) -> tuple[list, list[int]]:
    """MAML's meta-gradient in θ_0 of a float64 Conv4-8 without warps (2 differentiable
    steps on 12 glyph-sized images), with ``module.ENABLED`` off, then on, and the bytes
    autograd saved during each adaptation. Asserts that ``spy`` got ``2 * calls_per_step``
    calls when on and none when off (MAML's adaptation opens the second-order scope)."""
    import torch.nn.functional as F

    from warpgrad import conv4
    from warpgrad.engine.adapt import adapt
    from warpgrad.engine.inner_sgd import InnerSGD

    torch.manual_seed(0)
    model = conv4(5, filters=8, warp=None).double()
    opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    data = [torch.rand(12, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(12) % 5]
    task = Task(*data, *data)
    grads, saved_bytes = [], []
    for enabled in (False, True):
        monkeypatch.setattr(module, "ENABLED", enabled)
        theta0 = model.init_theta().detach().requires_grad_()
        sizes: list[int] = []

        def pack(t: torch.Tensor, sizes=sizes) -> torch.Tensor:
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = adapt(model, theta0, task, F.cross_entropy, opt, 2, create_graph=True,
                           generator=torch.Generator().manual_seed(0))
        x, y = task.test_batch()
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x, result.theta), y), theta0)
        grads.append(grad)
        saved_bytes.append(sum(sizes))
        assert len(spy) == (2 * calls_per_step if enabled else 0)
    return grads, saved_bytes
