"""Recording and replaying a computation's convolutions (``warpgrad.bench.conv_calls``, figure 10
of the benchmark suite): every call is seen, under ``torch.func`` transforms and in second
derivatives too, its FLOPs are the ones ``torch.utils.flop_counter`` counts, a replay makes
the same call, and the calls of a meta-iteration grow linearly in K, as the figure assumes.
Timing every operator in place sees every call and puts the convolutions' among them.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from warpgrad import bench
from warpgrad.bench import common
from warpgrad.bench.conv_calls import ConvCall, record_convolutions, replay, time_operators


class _ConvFlops(TorchDispatchMode):
    """The convolutions' FLOPs by ``torch.utils.flop_counter``'s formulas (its
    ``FlopCounterMode`` also tracks modules with hooks that ``autograd.grad`` over a leaf
    does not allow)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func._overloadpacket
        if "convolution" in str(packet) and packet in flop_registry:
            self.flops += flop_registry[packet](*args, **(kwargs or {}), out_val=out)
        return out


def _learner_step(method: str, steps: int):
    scale = bench.SCALES["small"]
    tasks = common.build_tasks(scale.batch_size, 1)
    learner = common.build_learner(method, common.build_model(scale.filters), steps)
    return lambda: learner.meta_step(tasks)


@pytest.mark.parametrize("method", ["warp-leap-first-order", "warp-leap-exact"])
def test_flops_of_a_meta_iteration_are_what_the_flop_counter_counts(method):
    step = _learner_step(method, 2)
    counter = _ConvFlops()

    def counted():
        with counter:
            step()

    calls = record_convolutions(counted)
    assert sum(c.flops * n for c, n in calls.items()) == counter.flops > 0
    backward = {c for c in calls if c.backward}
    assert backward and any(not c.backward for c in calls)
    if method == "warp-leap-exact":
        # the step's second derivative, taken under torch.func.grad, is seen: more backward
        # convolutions than the first-order objective makes
        first_order = bench.convolution_calls(bench.SCALES["small"], "warp-leap-first-order", 2)
        assert sum(n for c, n in calls.items() if c.backward) > sum(
            n for c, n in first_order.items() if c.backward)


@pytest.mark.parametrize("method", ["warp-leap-first-order", "warp-leap-exact", "leap"])
def test_calls_grow_linearly_in_the_adaptation_length(method):
    # what the bench's figure records and extrapolates from K = 1 and 2
    one, two, three = (bench.convolution_calls(bench.SCALES["small"], method, k)
                       for k in (1, 2, 3))
    for call in one.keys() | two.keys() | three.keys():
        assert three[call] == one[call] + 2 * (two[call] - one[call]), call


def test_replay_makes_the_recorded_call_on_tensors_of_its_layout():
    x = torch.randn(4, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)

    def conv():
        out = F.conv2d(x, w, b, padding=1, stride=2)
        out.square().sum().backward()

    calls = record_convolutions(conv)
    assert sorted(c.backward for c in calls) == [False, True]
    assert all(n == 1 for n in calls.values())
    forward = next(c for c in calls if not c.backward)
    backward = next(c for c in calls if c.backward)
    assert forward.tensors[0] == ((4, 3, 9, 9), x.stride(), torch.float32)
    assert forward.out_shape == (4, 5, 5, 5)
    assert backward.rest[-1] == (False, True, True)  # the data needs no gradient
    # 2 x multiply-adds: each output element sums 3 x 3 x 3 products
    assert forward.flops == 2 * 4 * 5 * 5 * 5 * 27
    assert backward.flops == forward.flops  # the weight's gradient only
    tensors = forward.make_tensors("cpu")
    assert tensors[0].stride() == x.stride() and tensors[0].dtype == torch.float32
    assert torch.equal(forward.run(tensors), F.conv2d(tensors[0], tensors[1], tensors[2],
                                                      padding=1, stride=2))
    grads = backward.run(backward.make_tensors("cpu"))
    assert grads[0] is None and grads[1].shape == w.shape and grads[2].shape == b.shape

    r = replay(Counter({forward: 3, backward: 2}), repeats=2)
    assert r.calls == 5 and r.distinct == 2
    assert r.flops == 3 * forward.flops + 2 * backward.flops
    assert r.seconds > 0


def test_transposed_convolutions_count_their_input_positions():
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(4, 6, 3, 3)  # [C_in, C_out, kH, kW] for a transposed convolution
    counter = _ConvFlops()
    with counter:
        calls = record_convolutions(lambda: F.conv_transpose2d(x, w, stride=2))
    (call,) = calls
    assert isinstance(call, ConvCall) and call.flops == counter.flops
    assert call.flops == 2 * 2 * 4 * 6 * 9 * 25


def test_expanded_inputs_are_replayed_with_their_strides():
    x = torch.randn(1, 2, 6, 6).expand(3, 2, 6, 6)  # stride 0 over the batch
    w = torch.randn(4, 2, 3, 3)
    (call,) = record_convolutions(lambda: F.conv2d(x, w))
    tensors = call.make_tensors("cpu")
    assert tensors[0].stride() == x.stride() and tensors[2] is None
    assert call.run(tensors).shape == (3, 4, 4, 4)


class _Calls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_operators_timed_in_place_are_every_call_and_the_convolutions_among_them():
    g = torch.Generator().manual_seed(0)
    # maps large enough that every other operator, not only the convolutions, takes well
    # over the clock's own ~2 µs per call that is taken off each
    x = torch.randn(16, 3, 32, 32, generator=g)
    w = torch.randn(5, 3, 3, 3, generator=g)

    def second_order():  # a convolution's gradient, differentiated again under torch.func
        def loss(weight):
            return F.conv2d(x, weight, padding=1).tanh().square().sum()

        return torch.func.grad(lambda v: torch.func.grad(loss)(v).square().sum())(w)

    counter = _Calls()
    with counter:
        second_order()
    convolutions = sum(n for op, n in counter.calls.items() if "convolution" in op)
    timed = time_operators(second_order)
    assert timed.calls == sum(counter.calls.values()) and convolutions >= 3
    assert 0 < timed.convolution_seconds < timed.seconds < timed.wall_seconds
    assert 0 < timed.timer_seconds * timed.calls < timed.wall_seconds
    m = torch.randn(256, 256, generator=g)
    without = time_operators(lambda: torch.func.grad(lambda v: (v @ v @ v).sum())(m))
    assert without.convolution_calls == 0 and without.convolution_seconds == 0
    assert without.calls > 0 and without.seconds > 0
