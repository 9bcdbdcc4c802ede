"""Small models and tasks shared by the tests (float64 so finite differences are precise)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from warpgrad import InnerSGD, Task, WarpedModel, WarpGrad

TEST_THREADS = int(os.environ.get("WARPGRAD_TEST_THREADS", "1"))
"""PyTorch threads the tests run on (``WARPGRAD_TEST_THREADS``, default 1)."""


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


def calls_of(monkeypatch, function: type) -> list[int]:
    """A list that gets an entry each time ``function.apply`` (an autograd function) runs."""
    calls: list[int] = []
    apply = function.apply
    monkeypatch.setattr(function, "apply",
                        staticmethod(lambda *args: calls.append(1) or apply(*args)))
    return calls


def point_meta_gradient(model: WarpedModel, variant: str, x, y, xm, ym) -> torch.Tensor:
    """φ's gradient (flat, float64) of WarpGrad's meta-loss at θ_0 of a classifier: one step
    on ``(x, y)``, the loss after it on ``(xm, ym)``."""
    objective = WarpGrad(variant)
    model.zero_grad()
    theta = model.init_theta().detach()
    objective.point_loss(model, F.cross_entropy, InnerSGD(model.task_spec, 0.1), theta, None,
                         (x, y), [(xm, ym)]).backward()
    return torch.cat([p.grad.flatten() for p in model.warp_parameters().values()]).double()
