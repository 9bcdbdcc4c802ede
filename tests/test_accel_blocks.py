"""A converted Conv4's blocks run channels-last on the CPU (warpgrad.accel.blocks), with batch
norm kept accurate there (warpgrad.accel.norm): the same values and gradients as the
reference model's NCHW ``nn.Sequential`` blocks, to second order, under ``torch.func.grad``
too, and the plain block wherever that path does not apply. The reference side of every
comparison is a block or model that did not go through ``accel.convert``."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from warpgrad import MetaLearner, WarpedModel, accel, conv4
from warpgrad.accel import blocks as accel_blocks
from warpgrad.accel.blocks import ConvBlock
from warpgrad.accel.conv import Conv2d
from warpgrad.accel.norm import BatchNorm2d, channels_last_batch_norm
from warpgrad.accel.pool import MaxPool2d
from warpgrad.accel.transforms import to_channels_last
from warpgrad.algorithms import Leap, WarpGrad
from warpgrad.models import batch_norm
from warpgrad.tasks import Task


def test_channels_last_view_holds_the_same_values_in_nhwc():
    for x in (torch.randn(2, 1, 5, 4), torch.randn(2, 3, 5, 4),
              torch.randn(2, 1, 9, 9)[:, :, 1:6, 2:6]):  # not contiguous
        y = to_channels_last(x)
        torch.testing.assert_close(y, x, rtol=0, atol=0)
        assert y.stride(1) == 1  # channels innermost


def _activation(shape=(3, 4, 7, 7), dtype=torch.float64, seed=0) -> torch.Tensor:
    """Conv-like activations with the ties of blank image regions, a NaN and -inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x[:, :, : shape[2] // 2] = 0.25  # a flat region: every window a tie
    x[:, 1, -1, -1] = -float("inf")
    x[0, 0, -2, -2] = float("nan")
    return x.to(dtype)


@pytest.mark.parametrize("shape", [(3, 4, 7, 7), (2, 3, 28, 28), (2, 2, 3, 3), (1, 2, 6, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_both_pooling_kernels_pick_the_same_element_of_every_window(shape, dtype):
    """What the block relies on: NHWC pooling gives NCHW pooling's values and indices
    (first maximum of a tie, NaN wins), so the gradient lands on the same element."""
    x = _activation(shape, dtype)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert not nhwc.is_contiguous() or shape[1] == 1
    values, index = F.max_pool2d(x, 2, return_indices=True)
    nhwc_values, nhwc_index = F.max_pool2d(nhwc, 2, return_indices=True)
    assert torch.equal(nhwc_values.nan_to_num(9.0), values.nan_to_num(9.0))
    assert torch.equal(nhwc_index, index)


def _spy(monkeypatch) -> list[int]:
    """Counts the blocks that took the channels-last path."""
    calls: list[int] = []
    convert = accel_blocks.to_channels_last
    monkeypatch.setattr(accel_blocks, "to_channels_last",
                        lambda x: calls.append(1) or convert(x))
    return calls


def _plain_block(in_channels: int, dtype=torch.float64, seed=0) -> nn.Sequential:
    """A Conv4 block as the reference model builds it."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.MaxPool2d(2),
                         batch_norm.BatchNorm2d(6, track_running_stats=False),
                         nn.ReLU()).to(dtype)


def _converted(block: nn.Sequential) -> ConvBlock:
    """A copy of ``block`` as ``accel.convert`` turns it inside a model."""
    fast = accel.convert(WarpedModel(nn.Sequential(copy.deepcopy(block)))).module[0]
    assert type(fast) is ConvBlock
    return fast


def _block(in_channels: int, dtype=torch.float64, seed=0) -> ConvBlock:
    return _converted(_plain_block(in_channels, dtype, seed))


def test_conversion_swaps_every_layer_of_the_block():
    plain = _plain_block(2)
    fast = _converted(plain)
    assert [type(m) for m in fast] == [Conv2d, MaxPool2d, BatchNorm2d, nn.ReLU]
    assert fast.state_dict().keys() == plain.state_dict().keys()


def _images(n: int, channels: int, size: int, dtype=torch.float64, seed=1) -> torch.Tensor:
    """Mostly blank images: the convolution's output ties in every blank pooling window."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, channels, size, size, dtype=torch.float64)
    rows = slice(size // 4, size // 2 + 1)
    x[:, :, rows, 1:3] = torch.rand(n, channels, rows.stop - rows.start, 2, generator=g,
                                    dtype=torch.float64)
    return x.to(dtype)


@pytest.mark.parametrize("channels,size,every", [(1, 28, 1), (3, 9, 1), (8, 7, 1), (6, 3, 1),
                                                 (1, 28, 2), (3, 9, 2)])
def test_block_gives_the_plain_blocks_values_and_gradients(monkeypatch, channels, size, every):
    """``every``: 2 feeds every other image, a view that is not contiguous (as a task's whole
    training set can be)."""
    calls = _spy(monkeypatch)
    plain_block = _plain_block(channels)
    fast_block = _converted(plain_block)
    x = _images(10, channels, size)[::every]

    def run(block: nn.Module) -> list[torch.Tensor]:
        leaf = x.clone().requires_grad_()
        out = block(leaf)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2),
                               dtype=out.dtype)
        return [out, *torch.autograd.grad(out, [leaf, *block.parameters()], upstream)]

    plain = run(plain_block)
    assert not calls
    fast = run(fast_block)
    assert calls  # the channels-last path ran
    assert fast[0].is_contiguous(memory_format=torch.channels_last)  # NHWC out
    assert plain[0].is_contiguous()
    # the same sums, in another order; the conv bias's gradient is zero in exact arithmetic
    # (batch norm subtracts it), so both ways it is rounding of O(1) terms: ~1e-12
    for ours, theirs in zip(fast, plain, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-11)


def _conv4_pair(**kwargs) -> tuple[WarpedModel, WarpedModel]:
    """The reference Conv4 and a converted copy, float64."""
    torch.manual_seed(0)
    plain = conv4(5, filters=8, **kwargs).double()
    return plain, accel.convert(copy.deepcopy(plain))


def test_every_pass_of_a_converted_conv4_stays_channels_last():
    """What the speed rests on: no block hands NCHW activations or gradients to the next
    (a layout copy each, and NHWC pooling's backward is slow for an NCHW gradient)."""
    _, model = _conv4_pair()
    x = _images(6, 1, 28).requires_grad_()
    seen = []

    def record(module, args, output):
        seen.append((module, output))
        output.register_hook(lambda grad: seen.append((module, grad)))

    for name in ("block1", "warp1", "block2", "warp2", "block3"):
        model.module.get_submodule(name).register_forward_hook(record)
    out = model(x)
    out.sum().backward()
    assert len(seen) == 10
    for module, tensor in seen:
        assert tensor.is_contiguous(memory_format=torch.channels_last), module
        assert not tensor.is_contiguous(), module


def test_conv4_first_and_second_order_gradients_match_the_plain_blocks(monkeypatch):
    """The whole learner with warps: its loss, θ and φ gradients, and a second derivative
    through them (what MAML and the exact objective differentiate)."""
    calls = _spy(monkeypatch)
    x, y = _images(12, 1, 28), torch.arange(12) % 5
    results = []
    for model in _conv4_pair():
        theta = model.init_theta().detach().requires_grad_()
        phi = {n: p.detach().requires_grad_() for n, p in model.warp_parameters().items()}
        loss = F.cross_entropy(model(x, theta, phi), y)
        g_theta, *g_phi = torch.autograd.grad(loss, [theta, *phi.values()], create_graph=True)
        second = torch.autograd.grad(g_theta.square().sum(), list(phi.values()))
        results.append([loss, g_theta, *g_phi, *second])
    assert len(calls) == 4  # every block, in the converted model's pass only
    assert results[0][-1].abs().sum() > 0
    for ours, theirs in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_under_torch_func_grad_the_channels_last_path_runs_and_agrees(monkeypatch):
    """The exact objective's inner gradient is a ``torch.func.grad``."""
    calls = _spy(monkeypatch)
    x, y = _images(12, 1, 28), torch.arange(12) % 5
    grads = []
    for model in _conv4_pair():
        theta = model.init_theta().detach()
        grads.append(torch.func.grad(lambda t, m=model: F.cross_entropy(m(x, t), y))(theta))
    assert calls
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    block = _block(2)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(3))  # no ties: differentiable
    assert torch.autograd.gradcheck(block, (x,))
    assert torch.autograd.gradgradcheck(block, (x,))


def test_under_vmap_the_block_is_the_plain_block(monkeypatch):
    """Under vmap (a hidden batch dimension) the block is an ``nn.Sequential``."""
    calls = _spy(monkeypatch)
    plain = _plain_block(3)
    block = _converted(plain)
    x = _images(4, 3, 8)
    batched = torch.stack([x, x.flip(0)])
    vmapped = torch.func.vmap(block)(batched)
    assert not calls
    torch.testing.assert_close(vmapped[1], plain(x.flip(0)), rtol=1e-12, atol=1e-12)


def test_channels_last_input_is_taken_as_it_is():
    """An NHWC input (the previous block's output) is not copied."""
    block = _block(3)
    x = _images(4, 3, 8).contiguous(memory_format=torch.channels_last)
    seen = []
    block[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].data_ptr()))
    out = block(x)
    assert seen == [x.data_ptr()]
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, block(x.contiguous()), rtol=1e-12, atol=1e-12)


def test_meta_step_matches_the_plain_blocks(monkeypatch):
    """A Warp-Leap meta-step with the exact objective (adaptation, buffer, φ and θ_0
    updates) is the same computation with and without channels-last blocks."""
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    tasks = []
    for _ in range(2):
        x = _images(36, 1, 28, seed=int(torch.randint(100, (1,), generator=g)))
        y = torch.arange(3).repeat_interleave(12)
        tasks.append(Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=16))
    torch.manual_seed(0)
    reference = conv4(3, filters=8).double()
    results = []
    for accelerated in (False, True):
        model = copy.deepcopy(reference)
        if accelerated:
            accel.convert(model)
        learner = MetaLearner(model, F.cross_entropy, steps=3, warp=WarpGrad("exact"),
                              init=Leap(), inner_lr=0.1, seed=0)
        learner.meta_step(tasks)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert bool(calls) == accelerated
    start = torch.cat([p.detach().flatten() for p in reference.parameters()])
    assert (results[0] - start).abs().max() > 1e-3
    # float64 rounding, amplified by batch norm over 16 samples at 1x1 in block 4 (over 8,
    # 1e-14 apart in one point's meta-gradient grew to 9e-9 here)
    torch.testing.assert_close(results[1], results[0], rtol=1e-7, atol=1e-9)


# -- batch norm on channels-last input (warpgrad.accel.norm) ----------------------------------
def _conv_like(shape=(16, 6, 9, 9), dtype=torch.float64, seed=4) -> torch.Tensor:
    """Per-channel offsets large against the spread, and many equal values (blank regions)."""
    g = torch.Generator().manual_seed(seed)
    x = 3.0 + torch.randn(1, shape[1], 1, 1, generator=g, dtype=torch.float64)
    x = x + 0.05 * torch.randn(*shape, generator=g, dtype=torch.float64)
    x[:, :, : shape[2] // 2] = 2.5
    return x.to(dtype)


@pytest.mark.parametrize("needs", [n for n in itertools.product([False, True], repeat=4)
                                   if n[0] or (n[3] and (n[1] or n[2]))])
def test_batch_norm_second_derivative_for_every_input_that_needs_one(needs):
    """Its backward's own backward (taken where a gradient is differentiated again) against
    PyTorch's, for each combination of x, γ, β and the upstream gradient needing a
    gradient (each combination takes other branches of it)."""
    g = torch.Generator().manual_seed(7)
    x0 = _conv_like().contiguous(memory_format=torch.channels_last)
    w0, b0 = (torch.rand(6, generator=g, dtype=torch.float64) + 0.5 for _ in range(2))
    up0 = torch.randn(x0.shape, generator=g, dtype=torch.float64)

    def derivatives(norm) -> list[torch.Tensor | None]:
        x, w, b, up = (t.detach().clone().requires_grad_(need) for t, need in
                       zip((x0, w0, b0, up0), needs, strict=True))
        out = norm(x, w, b)
        wanted = [t for t in (x, w, b, up) if t.requires_grad]
        first = torch.autograd.grad((out * up).sum(), wanted, create_graph=True,
                                    allow_unused=True)
        weights = torch.Generator().manual_seed(8)
        scalar = sum((torch.randn(d.shape, generator=weights, dtype=d.dtype) * d).sum()
                     for d in first if d is not None)
        second = torch.autograd.grad(scalar, wanted, allow_unused=True)
        return [out, *first, *second]

    ours = derivatives(lambda x, w, b: channels_last_batch_norm(x, w, b, 1e-5))
    theirs = derivatives(lambda x, w, b: F.batch_norm(x.contiguous(), None, None, w, b, True,
                                                      0.1, 1e-5))
    for a, c in zip(ours, theirs, strict=True):
        if a is None or c is None:  # not reached from the scalar either way: zero
            assert all(t is None or not t.abs().max() > 0 for t in (a, c))
            continue
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_batch_norm_is_batch_norm_to_second_order(affine):
    x = _conv_like().contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.Generator().manual_seed(5)
    w, b = ((torch.rand(6, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
            if affine else None for _ in range(2))
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64)

    def derivatives(norm) -> list[torch.Tensor]:
        out = norm(x)
        inputs = [x, w, b] if affine else [x]
        first = torch.autograd.grad(out, inputs, upstream, create_graph=True)
        scalar = first[0].square().sum() + (first[0] * x).sum()
        if affine:
            scalar = scalar + first[1].square().sum()
        second = torch.autograd.grad(scalar, inputs[:2] if affine else inputs)
        return [out, *first, *second]

    ours = derivatives(lambda t: channels_last_batch_norm(t, w, b, 1e-5))
    theirs = derivatives(lambda t: F.batch_norm(t.contiguous(), None, None, w, b, True, 0.1,
                                                1e-5))
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for a, c in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-11)
    small = x.detach()[:4, :2, :3, :3].contiguous(memory_format=torch.channels_last)
    small = (small + 0.1 * torch.randn(small.shape, generator=g, dtype=torch.float64)
             ).requires_grad_()  # no equal values: differentiable everywhere
    args = (small, *(t.detach()[:2].clone().requires_grad_() for t in (w, b))) if affine else (
        small, None, None)
    fn = lambda *a: channels_last_batch_norm(*a, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_channels_last_batch_norm_is_as_accurate_as_nchw_in_float32():
    """PyTorch's own NHWC kernel is ~100x less accurate on such input (module docstring)."""
    x64 = _conv_like((64, 8, 14, 14))
    w = torch.rand(8, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 0.5
    b = torch.zeros(8, dtype=torch.float64)
    upstream = torch.randn(x64.shape, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64)

    def run(norm, x, dtype) -> list[torch.Tensor]:
        x = x.to(dtype).requires_grad_()
        out = norm(x, w.to(dtype), b.to(dtype))
        return [out.double(), torch.autograd.grad(out, x, upstream.to(dtype))[0].double()]

    def nchw(x, w_, b_):
        return F.batch_norm(x, None, None, w_, b_, True, 0.1, 1e-5)

    reference = run(nchw, x64, torch.float64)
    errors = {name: [((a - r).norm() / r.norm()).item() for a, r in zip(result, reference)]
              for name, result in (
                  ("nchw", run(nchw, x64, torch.float32)),
                  ("ours", run(lambda x, w_, b_: channels_last_batch_norm(x, w_, b_, 1e-5),
                               x64.contiguous(memory_format=torch.channels_last),
                               torch.float32)))}
    output_error, gradient_error = errors["ours"]
    assert output_error < 3 * errors["nchw"][0] + 1e-7, errors
    # the backward pass is PyTorch's NHWC kernel: its sums are not float64's
    assert gradient_error < 10 * errors["nchw"][1] + 1e-6, errors


def test_channels_last_batch_norm_under_bf16_autocast_is_batch_norm():
    """Under ``precision="bf16"`` batch norm gets bfloat16 input and float32 parameters."""
    x = _conv_like(dtype=torch.float32)
    w, b = torch.rand(6) + 0.5, torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = F.conv2d(x, torch.eye(6).view(6, 6, 1, 1))  # bfloat16, as a conv's output is
        ours = channels_last_batch_norm(h.contiguous(memory_format=torch.channels_last), w, b,
                                        1e-5)
        theirs = F.batch_norm(h.contiguous(), None, None, w, b, True, 0.1, 1e-5)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("training", [True, False])
def test_running_statistics_with_channels_last_input_are_nchws(training):
    """Layers that keep running statistics update and use them as the reference layer does
    with NCHW input."""
    torch.manual_seed(0)
    layers = [batch_norm.BatchNorm2d(6).double(), BatchNorm2d(6).double()]
    layers[1].load_state_dict(layers[0].state_dict())
    x = _conv_like()
    for layer in layers:
        layer.train()
        layer(x if layer is layers[0] else x.contiguous(memory_format=torch.channels_last))
        layer.train(training)
    outputs = [layers[0](x), layers[1](x.contiguous(memory_format=torch.channels_last))]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layers[1].running_mean, layers[0].running_mean)
    torch.testing.assert_close(layers[1].running_var, layers[0].running_var)
