"""``accel.convert``: a model keeps its parameters (the same objects), names and state, its
layers are swapped for the accelerator's, and everything it computes is the reference
model's, to rounding: forward passes, gradients, WarpGrad's meta-gradient and whole
meta-steps of every method. The reference side of each comparison is the model before
``accel.convert`` (or an unconverted twin built from the same seed)."""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import calls_of, point_meta_gradient
from warpgrad import MetaLearner, WarpedModel, accel, conv4, make_learner
from warpgrad.accel import AcceleratedBackend
from warpgrad.accel import conv as accel_conv
from warpgrad.accel import pool as accel_pool
from warpgrad.accel.blocks import ConvBlock
from warpgrad.accel.conv import Conv2d
from warpgrad.accel.norm import BatchNorm2d
from warpgrad.accel.pool import MaxPool2d
from warpgrad.algorithms import Leap, WarpGrad
from warpgrad.engine import InnerSGD
from warpgrad.engine.adapt import adapt
from warpgrad.engine.backend import REFERENCE
from warpgrad.engine.buffer import Points
from warpgrad.models import batch_norm
from warpgrad.tasks import Task


def _image_task(seed: int, n_way: int = 3, channels: int = 1, size: int = 28,
                batch_size: int | None = 8, dtype: torch.dtype = torch.float32) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_way * 6, channels, size, size, generator=g, dtype=dtype)
    y = torch.arange(n_way).repeat_interleave(6)
    return Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=batch_size)


def _pair(**kwargs) -> tuple[WarpedModel, WarpedModel]:
    """The reference Conv4 and a converted copy."""
    torch.manual_seed(0)
    plain = conv4(3, **kwargs)
    return plain, accel.convert(copy.deepcopy(plain))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- what convert changes, and what it keeps --------------------------------------------------
@pytest.mark.parametrize("norm", ["batch", "running"])
def test_convert_keeps_the_parameters_names_and_state(norm):
    model = conv4(3, filters=4, warp_batch_norm=True, batch_norm=norm).double()
    model.eval()
    params = dict(model.named_parameters())
    names = (model.task_names, model.warp_names)
    buffers = dict(model.named_buffers())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    before = model(x)
    converted = accel.convert(model, precision="fp32")
    assert converted is model  # in place
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    assert all(after[n] is p for n, p in params.items())  # the very same Parameter objects
    assert all(dict(model.named_buffers())[n] is b for n, b in buffers.items())
    assert all(a is b for a, b in zip(model.parameters(), params.values(), strict=True))
    assert (model.task_names, model.warp_names) == names
    assert not any(m.training for m in model.modules())  # the mode is kept
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)


def test_convert_swaps_the_layers_and_sets_the_backend():
    model = conv4(3, filters=4, warp_batch_norm=True)
    assert model.backend is REFERENCE
    accel.convert(model, precision="bf16", cuda_graphs=True, prefetch_mb=3)
    backend = model.backend
    assert isinstance(backend, AcceleratedBackend)
    assert (backend.precision, backend.cuda_graphs, backend.prefetch_mb) == ("bf16", True, 3)
    for i in range(1, 5):
        block = model.module.get_submodule(f"block{i}")
        assert type(block) is ConvBlock
        assert [type(m) for m in block] == [Conv2d, MaxPool2d, BatchNorm2d, nn.ReLU]
        warp = model.module.get_submodule(f"warp{i}")
        assert type(warp.map) is Conv2d and type(warp.norm) is BatchNorm2d
    kinds = {type(m) for m in model.modules()}
    assert not kinds & {nn.Conv2d, nn.MaxPool2d, batch_norm.BatchNorm2d, nn.BatchNorm2d}
    assert nn.Linear in kinds and nn.Flatten in kinds  # what has no twin stays


def test_convert_leaves_layers_without_an_accelerated_twin_alone():
    """Another padding mode, subclasses (whose forward may compute something else) and 1-d
    batch norm stay as they are; a zero-padded conv and PyTorch's own batch norm inside any
    container are swapped, a block not shaped like Conv4's stays a plain ``nn.Sequential``,
    and pooling with overlapping windows, swapped, pools as before."""

    class MyConv(nn.Conv2d):
        pass

    class Scaled(nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    reflect = nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect")
    mine = MyConv(3, 3, 3, padding=1)
    scaled = Scaled(3, track_running_stats=False)
    pool = nn.MaxPool2d(3, stride=1)
    norm1d = batch_norm.BatchNorm1d(3, track_running_stats=False)
    net = nn.Sequential(reflect, nn.ReLU(), mine, nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()),
                        scaled, nn.BatchNorm2d(3, track_running_stats=False), pool,
                        nn.Flatten(), nn.Linear(3 * 4 * 4, 3), norm1d)
    model = WarpedModel(net, warps=["3"])
    x = torch.rand(5, 1, 6, 6)
    before = model(x)
    accel.convert(model)
    assert net[0] is reflect and net[2] is mine and net[4] is scaled and net[9] is norm1d
    assert type(net[3]) is nn.Sequential and type(net[3][0]) is Conv2d
    assert type(net[5]) is BatchNorm2d
    assert type(net[6]) is MaxPool2d and repr(net[6]) == repr(pool)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_convert_twice_changes_only_the_backend():
    model = accel.convert(conv4(3, filters=4))
    layers = list(model.modules())
    accel.convert(model, precision="bf16")
    assert all(a is b for a, b in zip(model.modules(), layers, strict=True))
    assert model.backend.precision == "bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        accel.convert(conv4(3, filters=4), precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        AcceleratedBackend("fp16")
    assert accel.PRECISIONS == ("fp32", "bf16")


# -- the same numbers ------------------------------------------------------------------------
METHODS = [
    ("warp-leap", WarpGrad("exact")),
    ("warp-leap", WarpGrad("first-order")),
    ("maml", None),
    ("leap", None),
    ("warp-leap", WarpGrad("exact", "online", share_step=True)),
]


@pytest.mark.parametrize("method,warp", METHODS,
                         ids=["warp-leap-exact", "warp-leap-first-order", "maml", "leap",
                              "shared-step-online-exact"])
def test_converted_meta_step_equals_the_reference(method, warp):
    """A whole meta-step in float64 (adaptation, the meta-objective, φ and θ_0 updates)."""
    tasks = [_image_task(seed, dtype=torch.float64) for seed in range(2)]
    torch.manual_seed(0)
    reference = conv4(3, filters=4, warp=None if warp is None else "conv3x3").double()
    start = _flat(reference)
    results = []
    for model in (reference, accel.convert(copy.deepcopy(reference))):
        learner = make_learner(method, model, F.cross_entropy, steps=3, inner_lr=0.1, seed=0,
                               **({"warp": warp} if warp is not None else {}))
        learner.meta_step(tasks)
        results.append(_flat(model))
    assert (results[0] - start).abs().max() > 1e-3  # the step did something
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels,size,warp_options", [
    (1, 28, {}),
    (3, 40, {"warp_batch_norm": True, "warp_residual": True, "warp_activation": "relu"}),
])
def test_converted_forward_and_gradients_match_the_reference(channels, size, warp_options):
    plain, fast = _pair(in_channels=channels, image_size=size, filters=8, **warp_options)
    x = torch.rand(6, channels, size, size)
    y = torch.randint(3, (6,))

    def outputs(model: WarpedModel, dtype: torch.dtype) -> list[torch.Tensor]:
        model = copy.deepcopy(model).to(dtype)
        theta = model.init_theta().detach().requires_grad_()
        logits = model(x.to(dtype), theta)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, [theta, *model.warp_parameters().values()])
        return [logits, torch.cat([g.flatten() for g in grads])]

    plain64, plain32 = outputs(plain, torch.float64), outputs(plain, torch.float32)
    # float64: the same computation to rounding
    for a, b in zip(plain64, outputs(fast, torch.float64)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    # float32: rounding alone, whose size depends on the CPU's kernels; so the converted
    # model must be as accurate as the reference against float64, not within a fixed bound
    # (entries whose true value is ~0, such as the gradient of a conv bias that batch norm
    # cancels, are rounding noise either way: hence norms)
    for a, b, truth in zip(plain32, outputs(fast, torch.float32), plain64):
        rounding = (a.double() - truth).norm()
        assert rounding > 0
        assert (b.double() - truth).norm() <= 3 * rounding, (b - a).norm() / a.norm()


@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_converted_meta_step_matches_the_reference_with_wider_layers(variant):
    """Warp-Leap at 8 filters. In float64: at these toy shapes (batch norm over 9 samples
    at 1x1 in block 4) a float32 meta-step amplifies rounding to ~0.1-0.5 even between two
    runs of the same model."""
    plain, fast = _pair(filters=8)
    plain.double()
    fast.double()
    start = _flat(plain)
    tasks = [_image_task(seed, dtype=torch.float64) for seed in range(2)]
    results = []
    for model in (plain, fast):
        learner = MetaLearner(model, F.cross_entropy, steps=3, warp=WarpGrad(variant),
                              init=Leap(), inner_lr=0.1, seed=0)
        learner.meta_step(tasks)
        results.append(_flat(model))
    assert (results[0] - start).abs().max() > 1e-3  # the step did something
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_converted_meta_gradient_is_as_accurate_as_the_reference(variant):
    """Mostly-blank images (as glyphs are) give conv outputs whose per-channel mean dwarfs
    their spread; PyTorch's channels-last CPU batch norm lost precision there (a 27% error in
    the meta-gradient at the full protocol). Against a float64 reference, the converted
    model must be as accurate as the reference one; in float64 the two are the same
    computation."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, xm = ((torch.rand(24, 1, 28, 28, generator=g) > 0.85).float() for _ in range(2))
    y, ym = torch.arange(24) % 3, torch.arange(24) % 3
    plain = conv4(3, filters=16, warp_batch_norm=True)
    fast = accel.convert(copy.deepcopy(plain))
    reference = point_meta_gradient(copy.deepcopy(plain).double(), variant, x.double(), y,
                               xm.double(), ym)
    nchw = point_meta_gradient(plain, variant, x, y, xm, ym)
    same = point_meta_gradient(copy.deepcopy(fast).double(), variant, x.double(), y, xm.double(),
                          ym)
    torch.testing.assert_close(same, reference, rtol=1e-9, atol=1e-12)
    errors = {name: ((gradient - reference).norm() / reference.norm()).item()
              for name, gradient in (("nchw", nchw),
                                     ("cl", point_meta_gradient(fast, variant, x, y, xm, ym)))}
    assert errors["cl"] < max(10 * errors["nchw"], 1e-5), errors


def test_batched_objective_of_a_converted_model_matches_one_at_a_time():
    _, model = _pair(filters=8)
    model.double()  # exact at toy shapes amplifies float32 rounding, see above
    task = _image_task(0, dtype=torch.float64)
    optimizer = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    points = torch.stack([model.init_theta().detach() + 0.01 * torch.randn(
        model.task_spec.numel, dtype=torch.float64) for _ in range(3)])
    grads = []
    for batched in (False, True):
        objective = WarpGrad("exact", batched=batched)
        model.zero_grad()
        pts = Points(points, None, torch.zeros(3, dtype=torch.long), torch.arange(3))
        loss = objective.points_loss(model, F.cross_entropy, optimizer, pts, [task],
                                     torch.Generator().manual_seed(1))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.warp_parameters().values()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-10)


# -- the layers that serve twice-differentiated passes ---------------------------------------
def _spy_layers(monkeypatch) -> dict[str, list[int]]:
    """Calls of the accelerator's own autograd functions for convolution and pooling."""
    return {"convolution": calls_of(monkeypatch, accel_conv._Conv2d),
            "pooling": calls_of(monkeypatch, accel_pool._MaxPool2d)}


@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_second_order_layers_leave_the_warpgrad_meta_gradient_unchanged(monkeypatch, variant):
    """Through the objective's own path: the exact step takes them (its inner gradient runs
    under the accelerator's ``func_grad`` in the second-order scope, its loss after the step
    saves only the pool's argmax), the first-order step does not."""
    calls = _spy_layers(monkeypatch)
    torch.manual_seed(0)
    plain = conv4(5, filters=8).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(10, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(10) % 5
    theta = plain.init_theta().detach() + 0.01 * torch.randn(
        plain.task_spec.numel, generator=g, dtype=torch.float64)
    objective = WarpGrad(variant)
    grads = []
    for model in (plain, accel.convert(copy.deepcopy(plain))):
        opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
        loss = objective.point_loss(model, F.cross_entropy, opt, theta, None, (x, y), [(x, y)])
        grads.append(torch.autograd.grad(loss, list(model.warp_parameters().values())))
        converted = model is not plain
        for path, seen in calls.items():
            assert bool(seen) == (converted and variant == "exact"), path
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_second_order_layers_leave_mamls_meta_gradient_unchanged(monkeypatch):
    """MAML's differentiable adaptation opens the scope; pooling also saves less there."""
    calls = _spy_layers(monkeypatch)
    torch.manual_seed(0)
    plain = conv4(5, filters=8, warp=None).double()
    g = torch.Generator().manual_seed(1)
    train, test = ([torch.rand(12, 1, 28, 28, generator=g, dtype=torch.float64),
                    torch.arange(12) % 5] for _ in range(2))
    task = Task(*train, *test)
    grads, saved_bytes = [], []
    for model in (plain, accel.convert(copy.deepcopy(plain))):
        opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
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
        for seen in calls.values():  # 2 steps x Conv4's 4 layers of each
            assert len(seen) == (2 * 4 if model is not plain else 0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
    assert saved_bytes[1] < 0.8 * saved_bytes[0]


# -- the experiments' switches, and the process-wide one -------------------------------------
def test_speed_switches_in_a_config_reach_the_learner():
    from warpgrad.experiments.classification import ClassificationExperiment
    from warpgrad.experiments.registry import ConfigError, load_experiment

    _, config = load_experiment("glyphs-multishot", [
        "precision=bf16", "cuda_graphs=true", "buffer_on_disk=true", "buffer_dtype=float16",
        "filters=4", "n_train_tasks=2", "n_test_tasks=1"])
    learner = ClassificationExperiment(config).build_learner("warp-leap")
    backend = learner.model.backend
    assert isinstance(backend, AcceleratedBackend)
    assert (backend.precision, backend.cuda_graphs) == ("bf16", True)
    assert type(learner.model.module.block1) is ConvBlock
    assert learner.warp.buffer_on_disk and learner.warp.buffer_dtype == torch.float16
    default = ClassificationExperiment(load_experiment("glyphs-multishot", [
        "filters=4", "n_train_tasks=2", "n_test_tasks=1"])[1]).build_learner("warp-leap")
    assert isinstance(default.model.backend, AcceleratedBackend)  # the command accelerates
    assert (default.model.backend.precision, default.model.backend.cuda_graphs) == ("fp32",
                                                                                  False)
    plain = ClassificationExperiment(load_experiment("glyphs-multishot", [
        "accelerate=false", "filters=4", "n_train_tasks=2", "n_test_tasks=1"])[1]
    ).build_learner("warp-leap")
    assert plain.model.backend is REFERENCE
    assert type(plain.model.module.block1) is nn.Sequential
    with pytest.raises((ConfigError, ValueError), match="accelerate"):
        load_experiment("glyphs-multishot", ["accelerate=false", "precision=bf16"])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tuning applies to glibc only")
def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off():
    assert accel.tune_allocator() is True
    assert accel.tune_allocator() is True  # idempotent
    code = "from warpgrad.accel import tune_allocator; print(tune_allocator())"
    env = {**os.environ, "WARPGRAD_TUNE_MALLOC": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("accelerated", [False, True])
def test_a_layer_used_twice_takes_theta_in_both_places_and_is_left_unchanged(accelerated):
    """A submodule reached by two paths: θ's values are used in both, and the module's own
    parameters are the same afterwards (PyTorch's tied-weight swap alone would leave θ in
    the module: pytorch/pytorch#164759)."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = WarpedModel(nn.Sequential(shared, nn.Tanh(), shared), warps=[])
    if accelerated:
        accel.convert(model)
    own = shared.weight.detach().clone()
    x, theta = torch.randn(3, 4), torch.randn(model.task_spec.numel)
    weight, bias = theta[:16].view(4, 4), theta[16:]
    expected = F.linear(torch.tanh(F.linear(x, weight, bias)), weight, bias)
    for _ in range(2):
        assert torch.allclose(model(x, theta), expected, atol=1e-6)
        assert torch.equal(shared.weight.detach(), own)
    assert torch.allclose(model(x), shared(torch.tanh(shared(x))), atol=1e-6)


def test_tied_parameters_stay_tied_under_the_accelerated_forward():
    """One parameter held by two layers: θ's value is used in both, on the reference core
    and through the accelerator's remembered ties alike."""
    torch.manual_seed(0)
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    tied = WarpedModel(nn.Sequential(first, nn.Tanh(), second), warps=[])
    untied = WarpedModel(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)), warps=[])
    x = torch.randn(3, 4)
    for model in (tied, untied):
        theta = torch.randn(model.task_spec.numel)
        reference = model(x, theta)
        accel.convert(model)
        assert torch.equal(model(x, theta), reference)
        assert not torch.allclose(model(x), reference)  # θ was used, not the module's own


def _sequential_with_buffer() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    model[2].register_buffer("shift", torch.randn(2))
    model[2].register_forward_hook(lambda mod, inputs, out: out + mod.shift)
    return model


def test_the_accelerated_call_in_place_of_functional_call():
    """The accelerator's forward with given tensors equals ``functional_call``'s, first
    call and later ones, and leaves the module's own tensors in place."""
    module = _sequential_with_buffer()
    backend = AcceleratedBackend()
    own = {n: t.detach().clone() for n, t in [*module.named_parameters(),
                                               *module.named_buffers()]}
    x = torch.randn(3, 4)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        params = {n: torch.randn(p.shape, generator=g) for n, p in module.named_parameters()}
        buffers = {"2.shift": torch.randn(2, generator=g)}
        expected = torch.func.functional_call(module, (params, buffers), (x,))
        assert torch.equal(backend.forward(module, params, buffers, x), expected)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            assert torch.equal(tensor.detach(), own[name])


def test_the_accelerated_call_follows_a_changed_layout_and_restores_after_an_error():
    """A submodule replaced or a parameter reassigned after the first call is honoured, so
    is a buffer registered after it, and an exception in the forward leaves
    the module's own tensors in place."""
    module = _sequential_with_buffer()
    backend = AcceleratedBackend()
    x = torch.randn(3, 4)

    def given() -> dict[str, torch.Tensor]:
        return {n: torch.randn(p.shape) for n, p in module.named_parameters()}

    backend.forward(module, given(), {}, x)
    module[2] = nn.Linear(4, 3)  # the head replaced: a new owner of "2.weight"
    params = given()
    out = backend.forward(module, params, {}, x)
    assert out.shape == (3, 3)
    assert torch.equal(out, torch.func.functional_call(module, params, (x,)))
    module[0].weight = nn.Parameter(torch.randn(4, 4))  # reassigned in place of the old one
    params = given()
    assert torch.equal(backend.forward(module, params, {}, x),
                       torch.func.functional_call(module, params, (x,)))
    own = module[0].weight
    with pytest.raises(RuntimeError):
        backend.forward(module, {**params, "0.weight": torch.randn(5, 5)}, {}, x)
    assert module[0].weight is own
    module.register_buffer("extra", torch.zeros(1))  # a name it did not hold before
    assert torch.equal(backend.forward(module, params, {"extra": torch.ones(1)}, x),
                       torch.func.functional_call(module, params, (x,)))
