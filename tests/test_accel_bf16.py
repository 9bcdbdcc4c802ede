"""``accel.convert(model, precision="bf16")``: the forward passes run under bfloat16
autocast and approximate float32's, while WarpGrad's one step at θ_k stays float32 (the
backend's ``full_precision`` block); the meta-gradient's backward through that step runs in
bf16 and is as accurate as a float32 one. The reference side is the float32 model."""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import point_meta_gradient
from warpgrad import accel, conv4, make_learner
from warpgrad.accel import AcceleratedBackend
from warpgrad.accel.scopes import META_BACKWARD_BF16
from warpgrad.algorithms import WarpGrad
from warpgrad.engine import InnerSGD
from warpgrad.engine.adapt import adapt
from warpgrad.tasks import Task


def _image_task(seed: int, batch_size: int | None = 8) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(18, 1, 28, 28, generator=g)
    y = torch.arange(3).repeat_interleave(6)
    return Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=batch_size)


class _Float32MetaBackward(AcceleratedBackend):
    """bf16, with WarpGrad's step in float32 and the meta-gradient's backward through it in
    float32 too (the step's block without :data:`META_BACKWARD_BF16`)."""

    @contextmanager
    def full_precision(self):
        self._float32 += 1
        try:
            yield
        finally:
            self._float32 -= 1


class _Bf16Everywhere(AcceleratedBackend):
    """bf16 with no float32 block at all: what rounding WarpGrad's step to bf16 gives."""

    def full_precision(self):
        return nullcontext()


def test_bf16_precision_approximates_fp32_and_still_learns():
    torch.manual_seed(0)
    reference = conv4(3, filters=16)
    half = accel.convert(copy.deepcopy(reference), precision="bf16")
    x, y = torch.rand(16, 1, 28, 28), torch.randint(3, (16,))
    grads = []
    for model in (reference, half):
        theta = model.init_theta().detach().requires_grad_()
        logits = model(x, theta)
        assert logits.dtype == torch.float32  # outputs come back in float32
        loss = F.cross_entropy(logits, y)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(
            loss, [theta, *model.warp_parameters().values()])]))
    cosine = F.cosine_similarity(grads[0], grads[1], dim=0)
    assert not torch.equal(grads[0], grads[1])  # it really ran in bfloat16
    assert cosine > 0.95, cosine
    assert all(p.dtype == torch.float32 for p in half.parameters())
    learner = make_learner("warp-leap", half, F.cross_entropy, steps=10, inner_lr=0.1)
    task = _image_task(3, batch_size=None)
    losses = learner.adapt(task).losses
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("variant", ["first-order", "exact"])
def test_bf16_keeps_the_warpgrad_step_in_float32(variant):
    """Under bf16 the one step at θ_k runs in float32: on glyph batches bf16 rounding in
    that step alone turns the meta-gradient's cosine with the float64 one from ~0.97 to
    ~0.6 (0.69 and a 79% error at the multi-shot protocol's shapes). The exact
    meta-gradient's backward through the step runs in bf16 (``META_BACKWARD_BF16``) and
    is as accurate as a float32 one."""
    from warpgrad.data import AlphabetTasks, load_glyphs

    torch.manual_seed(0)
    task = AlphabetTasks(load_glyphs(), batch_size=32, n_train_tasks=1).train[0]
    inner, metas = task.warp_batches(0, torch.Generator().manual_seed(0))
    reference = conv4(20, filters=16)
    wide = ((inner[0].double(), inner[1]), [(x.double(), y) for x, y in metas])
    truth = point_meta_gradient(copy.deepcopy(reference).double(), variant, *wide[0], *wide[1][0])
    half = accel.convert(copy.deepcopy(reference), precision="bf16")
    kept = point_meta_gradient(half, variant, *inner, *metas[0])
    if variant == "exact":  # the meta-gradient's backward through the step ran in bf16
        half.backend = _Float32MetaBackward("bf16")
        float32_backward = point_meta_gradient(half, variant, *inner, *metas[0])
        assert not torch.equal(kept, float32_backward)

        def error(g):
            return ((g - truth).norm() / truth.norm()).item()

        assert error(kept) < 1.05 * error(float32_backward) + 1e-3
    half.backend = _Bf16Everywhere("bf16")
    rounded = point_meta_gradient(half, variant, *inner, *metas[0])
    assert F.cosine_similarity(kept, truth, dim=0) > 0.93
    assert F.cosine_similarity(rounded, truth, dim=0) < 0.8


@pytest.mark.parametrize("variant", ["first-order", "exact"])
def test_bf16_runs_only_the_step_at_theta_k_in_float32(variant):
    """What the first convolution computes in, pass by pass: the step's forward in float32
    (inside ``full_precision``), the loss after the step in bfloat16."""
    torch.manual_seed(0)
    model = accel.convert(conv4(3, filters=4), precision="bf16")
    backend = model.backend
    seen = []
    model.module.block1[0].register_forward_hook(
        lambda module, args, out: seen.append((out.dtype, backend._float32,
                                               bool(META_BACKWARD_BF16))))
    task = _image_task(0)
    inner, metas = task.warp_batches(0, torch.Generator().manual_seed(0))
    loss = WarpGrad(variant).point_loss(model, F.cross_entropy, InnerSGD(model.task_spec, 0.1),
                                        model.init_theta().detach(), None, inner, metas)
    assert loss.dtype == torch.float32
    assert seen == [(torch.float32, 1, True), (torch.bfloat16, 0, False)]
    assert backend._float32 == 0 and not META_BACKWARD_BF16  # the blocks are closed again
    seen.clear()
    model(inner[0])  # any other pass: bf16
    assert seen == [(torch.bfloat16, 0, False)]
    with backend.full_precision():
        model(inner[0])
    assert seen[-1] == (torch.float32, 1, True)
    fp32 = accel.convert(conv4(3, filters=4))
    with fp32.backend.full_precision():  # nothing to keep in float32: no bf16 backward
        assert fp32.backend._float32 == 1 and not META_BACKWARD_BF16


def test_bf16_shared_step_runs_the_adaptation_in_float32():
    """With share_step the adaptation's step is WarpGrad's step at θ_k (an observer that
    ``reuses_steps``), so under bf16 the adaptation runs in float32: its trajectory is then
    the float32 model's exactly, while a plain bf16 adaptation's is not."""
    task = _image_task(0, batch_size=None)
    torch.manual_seed(0)
    reference = conv4(3, filters=8)
    full = accel.convert(copy.deepcopy(reference))
    half = accel.convert(copy.deepcopy(reference), precision="bf16")

    class ReusesSteps:
        needs_final_loss = False
        reuses_steps = True

        def observe(self, record):
            pass

    def losses(model, observers):
        return adapt(model, model.init_theta(), task, F.cross_entropy,
                     InnerSGD(model.task_spec, 0.1), 3, observers=observers).losses

    expected = losses(full, [])
    torch.testing.assert_close(losses(half, [ReusesSteps()]), expected, rtol=0, atol=0)
    assert not torch.equal(losses(half, []), expected)
    online = WarpGrad("first-order", "online", share_step=True).online_observer(
        half, F.cross_entropy, InnerSGD(half.task_spec, 0.1), task, None, 1.0)
    assert online.reuses_steps
    fresh = WarpGrad("first-order", "online").online_observer(
        half, F.cross_entropy, InnerSGD(half.task_spec, 0.1), task, None, 1.0)
    assert not fresh.reuses_steps
