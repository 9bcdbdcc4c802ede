"""warpgrad._optim: torch.optim's SGD and Adam, step for step and state for state, without
importing torch._dynamo (which costs a process ~74 MB and 1.3 s)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from warpgrad._optim import SGD, Adam

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


def test_meta_learners_never_import_torch_dynamo():
    """The optimisers here, and the exact objective's inner gradient (warpgrad._autograd.func_grad,
    not torch.func.grad) keep torch._dynamo out of a run that does not compile."""
    code = """
import sys
import torch
import torch.nn.functional as F
from warpgrad import WarpGrad, conv4, make_learner
from warpgrad.tasks import Task
torch.manual_seed(0)
x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 4
for method, warp in (("warp-leap", WarpGrad("first-order")), ("leap", None),
                     ("warp-leap", WarpGrad("exact", "offline")), ("warp-maml", WarpGrad("exact")),
                     ("maml", None)):
    learner = make_learner(method, conv4(4, filters=4, warp="conv3x3" if warp else None),
                           F.cross_entropy, steps=2, warp=warp, meta_optimizer="adam")
    learner.meta_step([Task(x, y, x, y, batch_size=4, meta_split="train")])
    learner.warp_optimizer and learner.warp_optimizer.state_dict()
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
