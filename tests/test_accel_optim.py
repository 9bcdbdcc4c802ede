"""warpgrad.accel.optim: torch.optim's SGD and Adam, step for step and state for state,
without importing torch._dynamo (which costs a process ~74 MB and 1.3 s). The reference side
is ``torch.optim`` itself, what the reference backend's meta-optimisers are."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys

import pytest
import torch

from warpgrad import accel, conv4
from warpgrad.accel import optim
from warpgrad.accel.optim import SGD, Adam
from warpgrad.engine.backend import Backend

CASES = [
    (SGD, torch.optim.SGD, {"lr": 0.1}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (Adam, torch.optim.Adam, {"lr": 0.05}),
    (Adam, torch.optim.Adam, {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1}),
]


def _trajectory(cls, kwargs, steps: int = 5, state=None):
    """Parameters of a quadratic after ``steps`` steps with a learning-rate schedule, and
    the optimiser's state dict."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    opt = cls([{"params": [w]}, {"params": [b], "lr": 0.02}], **kwargs)
    if state is not None:  # a copy: loading keeps the given tensors, which steps then change
        opt.load_state_dict(copy.deepcopy(state))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    for _ in range(steps):
        opt.zero_grad()
        ((a @ w).square().sum() + (b - 1).pow(4).sum()).backward()
        opt.step()
        schedule.step()
    return [w.detach(), b.detach()], opt.state_dict()


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), CASES)
def test_steps_and_state_match_torch_optim(ours, theirs, kwargs):
    params, state = _trajectory(ours, kwargs)
    reference, reference_state = _trajectory(theirs, kwargs)
    assert isinstance(ours([torch.zeros(1, requires_grad=True)]), torch.optim.Optimizer)
    torch.testing.assert_close(params, reference, rtol=0, atol=0)
    torch.testing.assert_close(state, reference_state, rtol=0, atol=0)
    # the state dicts are interchangeable: resuming ours from theirs continues alike
    resumed, _ = _trajectory(ours, kwargs, 3, reference_state)
    expected, _ = _trajectory(theirs, kwargs, 3, reference_state)
    torch.testing.assert_close(resumed, expected, rtol=0, atol=0)
    assert not torch.equal(resumed[0], params[0])  # the loaded state mattered


def test_the_backends_meta_optimisers():
    """The accelerated backend hands out these optimisers, the reference one torch.optim's;
    both refuse unknown names."""
    w = [torch.zeros(2, requires_grad=True)]
    backend = accel.convert(conv4(3, filters=4)).backend
    for name, ours, theirs in (("sgd", SGD, torch.optim.SGD), ("adam", Adam, torch.optim.Adam)):
        assert type(backend.optimizer(name, [{"params": w}], 0.1)) is ours
        assert type(Backend().optimizer(name, [{"params": w}], 0.1)) is theirs
    for b in (backend, Backend()):
        with pytest.raises(ValueError, match="meta_optimizer"):
            b.optimizer("rmsprop", [{"params": w}], 0.1)


def test_the_undecorated_methods_are_torch_optims_own():
    """The module calls the functions under PyTorch's private decorators (``__wrapped__``
    chains). If PyTorch stops wrapping them, or wraps them without recording the function,
    this fails: accel/optim.py then needs another look."""
    base = torch.optim.Optimizer
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        decorated = getattr(base, name)
        assert hasattr(decorated, "__wrapped__"), name
        inner = inspect.unwrap(decorated)
        assert inner.__qualname__ == f"Optimizer.{name}", inner
        assert inner.__module__ == "torch.optim.optimizer", inner
        for cls in (SGD, Adam):
            assert getattr(cls, name) is inner, (cls, name)
    for cls, theirs, module in ((SGD, torch.optim.SGD, "sgd"), (Adam, torch.optim.Adam, "adam")):
        assert hasattr(theirs.step, "__wrapped__")
        inner = inspect.unwrap(theirs.step)
        assert (inner.__qualname__, inner.__module__) == (f"{theirs.__name__}.step",
                                                          f"torch.optim.{module}")
        assert cls.step is not theirs.step
    assert optim.__all__ == ["SGD", "Adam"]


def _fresh_process(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_optimisers_do_not_import_torch_dynamo_while_torch_optims_do():
    code = """
import sys
import torch
from warpgrad.accel.optim import SGD, Adam
w = torch.zeros(3, requires_grad=True)
b = torch.zeros(1, requires_grad=True)
for cls in (SGD, Adam):
    opt = cls([w], lr=0.1)
    opt.add_param_group({"params": [b]})
    (w.square().sum() + b.sum()).backward()
    opt.step()
    opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
ours = "torch._dynamo" in sys.modules
opt = torch.optim.SGD([w], lr=0.1)
w.sum().backward()
opt.step()
opt.zero_grad()
print(ours, "torch._dynamo" in sys.modules)
"""
    assert _fresh_process(code) == "False True"


def test_meta_learners_never_import_torch_dynamo():
    """The optimisers here, and the exact objective's inner gradient
    (warpgrad.accel.autograd.func_grad, not torch.func.grad) keep torch._dynamo out of a run
    of converted models."""
    code = """
import sys
import torch
import torch.nn.functional as F
from warpgrad import WarpGrad, accel, conv4, make_learner
from warpgrad.tasks import Task
torch.manual_seed(0)
x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 4
for method, warp in (("warp-leap", WarpGrad("first-order")), ("leap", None),
                     ("warp-leap", WarpGrad("exact", "offline")), ("warp-maml", WarpGrad("exact")),
                     ("maml", None)):
    model = accel.convert(conv4(4, filters=4, warp="conv3x3" if warp else None))
    learner = make_learner(method, model, F.cross_entropy, steps=2, warp=warp,
                           meta_optimizer="adam")
    learner.meta_step([Task(x, y, x, y, batch_size=4, meta_split="train")])
    learner.warp_optimizer and learner.warp_optimizer.state_dict()
    meta_optimizer = learner.init_optimizer or learner.warp_optimizer
    assert type(meta_optimizer).__module__ == "warpgrad.accel.optim"
print("torch._dynamo" in sys.modules)
"""
    assert _fresh_process(code) == "False"
