"""The speed switches give the plain path's results: channels-last to float rounding, the
autograd first-order step exactly, bf16 to its documented tolerance; the allocator tuning is
opt-out."""

import contextlib
import copy
import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import calls_of
from warpgrad import MetaLearner, WarpedModel, conv4, make_learner, tune_allocator
from warpgrad._scope import Scope
from warpgrad.algorithms import Leap, WarpGrad
from warpgrad.engine import InnerSGD
from warpgrad.engine.adapt import adapt
from warpgrad.models import _conv, _conv_block, _pool
from warpgrad.models.warped import to_channels_last
from warpgrad.tasks import Task


def _image_task(seed: int, n_way: int = 3, channels: int = 1, size: int = 28,
                batch_size: int | None = 8, dtype: torch.dtype = torch.float32) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_way * 6, channels, size, size, generator=g, dtype=dtype)
    y = torch.arange(n_way).repeat_interleave(6)
    return Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=batch_size)


@contextlib.contextmanager
def _nchw():
    """Inside: every layer NCHW (Conv4's blocks otherwise run channels-last on a CPU, see
    tests/test_conv_block.py), the plain side of these comparisons."""
    saved = _conv_block.CHANNELS_LAST
    _conv_block.CHANNELS_LAST = False
    try:
        yield
    finally:
        _conv_block.CHANNELS_LAST = saved


def _pair(**kwargs) -> tuple[WarpedModel, WarpedModel]:
    torch.manual_seed(0)
    plain = conv4(3, channels_last=False, **kwargs)
    fast = copy.deepcopy(plain)
    fast.channels_last = True
    return plain, fast


def test_channels_last_view_holds_the_same_values_in_nhwc():
    for x in (torch.randn(2, 1, 5, 4), torch.randn(2, 3, 5, 4),
              torch.randn(2, 1, 9, 9)[:, :, 1:6, 2:6]):  # not contiguous
        y = to_channels_last(x)
        torch.testing.assert_close(y, x, rtol=0, atol=0)
        assert y.stride(1) == 1  # channels innermost


@pytest.mark.parametrize("channels,size,warp_options", [
    (1, 28, {}),
    (3, 40, {"warp_batch_norm": True, "warp_residual": True, "warp_activation": "relu"}),
])
def test_channels_last_forward_and_gradients_match_nchw(channels, size, warp_options):
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

    with _nchw():
        plain64, plain32 = outputs(plain, torch.float64), outputs(plain, torch.float32)
    # float64: the same computation to rounding
    for a, b in zip(plain64, outputs(fast, torch.float64)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    # float32: close in norm (entries whose true value is ~0, such as the gradient of a conv
    # bias that batch norm cancels, are rounding noise either way)
    for a, b in zip(plain32, outputs(fast, torch.float32)):
        assert (b - a).norm() <= 1e-5 * a.norm()


@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_channels_last_meta_step_matches_nchw(variant):
    """A whole meta-step (adaptation, buffer, φ and θ_0 updates) is the same computation in
    both layouts. In float64: at these toy shapes (batch norm over 9 samples at 1x1 in block
    4) a float32 meta-step amplifies rounding to ~0.1-0.5 even between two NCHW runs."""
    plain, fast = _pair(filters=8)
    plain.double()
    fast.double()
    start = torch.cat([p.detach().flatten() for p in plain.parameters()])
    tasks = [_image_task(seed, dtype=torch.float64) for seed in range(2)]
    results = []
    for model, layout in ((plain, _nchw()), (fast, contextlib.nullcontext())):
        learner = MetaLearner(model, F.cross_entropy, steps=3, warp=WarpGrad(variant),
                              init=Leap(), inner_lr=0.1, seed=0)
        with layout:
            learner.meta_step(tasks)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert (results[0] - start).abs().max() > 1e-3  # the step did something
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-8)


def _meta_gradient(model: WarpedModel, variant: str, x, y, xm, ym) -> torch.Tensor:
    objective = WarpGrad(variant)
    model.zero_grad()
    theta = model.init_theta().detach()
    objective.point_loss(model, F.cross_entropy, InnerSGD(model.task_spec, 0.1), theta, None,
                         (x, y), [(xm, ym)]).backward()
    return torch.cat([p.grad.flatten() for p in model.warp_parameters().values()]).double()


@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_channels_last_meta_gradient_is_as_accurate_as_nchw(variant):
    """Mostly-blank images (as glyphs are) give conv outputs whose per-channel mean dwarfs
    their spread; PyTorch's channels-last CPU batch norm lost precision there (a 27% error in
    the meta-gradient at the full protocol). Against a float64 reference, channels-last must be
    as accurate as NCHW; in float64 the two are the same computation."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, xm = ((torch.rand(24, 1, 28, 28, generator=g) > 0.85).float() for _ in range(2))
    y, ym = torch.arange(24) % 3, torch.arange(24) % 3
    plain = conv4(3, filters=16, warp_batch_norm=True, channels_last=False)
    fast = copy.deepcopy(plain)
    fast.channels_last = True
    with _nchw():
        reference = _meta_gradient(copy.deepcopy(plain).double(), variant, x.double(), y,
                                   xm.double(), ym)
        nchw = _meta_gradient(plain, variant, x, y, xm, ym)
    fast64 = copy.deepcopy(fast).double()
    same = _meta_gradient(fast64, variant, x.double(), y, xm.double(), ym)
    torch.testing.assert_close(same, reference, rtol=1e-9, atol=1e-12)
    errors = {name: ((gradient - reference).norm() / reference.norm()).item()
              for name, gradient in (("nchw", nchw),
                                     ("cl", _meta_gradient(fast, variant, x, y, xm, ym)))}
    assert errors["cl"] < max(10 * errors["nchw"], 1e-5), errors


def test_batched_objective_with_channels_last_matches_one_at_a_time():
    _, model = _pair(filters=8)
    model.double()  # exact at toy shapes amplifies float32 rounding, see above
    task = _image_task(0, dtype=torch.float64)
    optimizer = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    points = torch.stack([model.init_theta().detach() + 0.01 * torch.randn(
        model.task_spec.numel, dtype=torch.float64) for _ in range(3)])
    from warpgrad.engine.buffer import Points

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


def test_first_order_autograd_path_matches_the_functorch_path():
    model = conv4(3, filters=8)
    task = _image_task(0)
    optimizer = InnerSGD(model.task_spec, 0.1)
    theta = model.init_theta().detach() + 0.01
    objective = WarpGrad("first-order")
    batches = task.warp_batches(0, torch.Generator().manual_seed(0))
    grads = []
    for vmapped in (False, True):
        model.zero_grad()
        objective.point_loss(model, F.cross_entropy, optimizer, theta, None, batches[0],
                             batches[1], vmapped=vmapped).backward()
        grads.append([p.grad.clone() for p in model.warp_parameters().values()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_bf16_precision_approximates_fp32_and_still_learns():
    torch.manual_seed(0)
    reference = conv4(3, filters=16)
    half = copy.deepcopy(reference)
    half.precision = "bf16"
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
    learner = make_learner("warp-leap", half, F.cross_entropy, steps=10, inner_lr=0.1)
    task = _image_task(3, batch_size=None)
    losses = learner.adapt(task).losses
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("variant", ["first-order", "exact"])
def test_bf16_keeps_the_warpgrad_step_in_float32(variant, monkeypatch):
    """Under bf16 the one step at θ_k runs in float32: on glyph batches bf16 rounding in
    that step alone turns the meta-gradient's cosine with the float64 one from ~0.97 to
    ~0.6 (0.69 and a 79% error at the multi-shot protocol's shapes). The exact
    meta-gradient's backward through the step runs in bf16 (``meta_backward_in_bf16``) and
    is as accurate as a float32 one."""
    import contextlib

    from warpgrad.data import AlphabetTasks, load_glyphs

    torch.manual_seed(0)
    task = AlphabetTasks(load_glyphs(), batch_size=32, n_train_tasks=1).train[0]
    inner, metas = task.warp_batches(0, torch.Generator().manual_seed(0))
    reference = conv4(20, filters=16)
    wide = ((inner[0].double(), inner[1]), [(x.double(), y) for x, y in metas])
    truth = _meta_gradient(copy.deepcopy(reference).double(), variant, *wide[0], *wide[1][0])
    half = copy.deepcopy(reference)
    half.precision = "bf16"
    kept = _meta_gradient(half, variant, *inner, *metas[0])
    if variant == "exact":  # the meta-gradient's backward through the step ran in bf16
        monkeypatch.setattr(_conv, "META_BACKWARD_BF16", Scope())  # never open: float32
        float32_backward = _meta_gradient(half, variant, *inner, *metas[0])
        monkeypatch.undo()
        assert not torch.equal(kept, float32_backward)

        def error(g):
            return ((g - truth).norm() / truth.norm()).item()

        assert error(kept) < 1.05 * error(float32_backward) + 1e-3
    half.full_precision = contextlib.nullcontext  # what bf16 everywhere would give
    rounded = _meta_gradient(half, variant, *inner, *metas[0])
    assert F.cosine_similarity(kept, truth, dim=0) > 0.93
    assert F.cosine_similarity(rounded, truth, dim=0) < 0.8


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        conv4(3, precision="fp8")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tuning applies to glibc only")
def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off():
    assert tune_allocator() is True
    assert tune_allocator() is True  # idempotent
    code = "from warpgrad import tune_allocator; print(tune_allocator())"
    env = {**os.environ, "WARPGRAD_TUNE_MALLOC": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_parallel_task_adaptation_on_conv4_is_the_same_meta_step():
    """vmap over tasks keeps each task's own batch-norm statistics (Conv4, float64)."""
    tasks = [_image_task(seed, batch_size=None, dtype=torch.float64) for seed in range(3)]
    results = []
    for parallel in (False, True):
        torch.manual_seed(0)
        model = conv4(3, filters=8).double()
        learner = MetaLearner(model, F.cross_entropy, steps=3, warp=WarpGrad("first-order"),
                              init=Leap(), inner_lr=0.1, parallel_tasks=parallel)
        learner.meta_step(tasks)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-8, atol=1e-10)


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _meta_step_parameters(compiled: bool, method: str, warp: WarpGrad | None,
                          tasks: list[Task]) -> torch.Tensor:
    torch.manual_seed(0)
    model = conv4(3, filters=4, compile=compiled).double()
    learner = make_learner(method, model, F.cross_entropy, steps=2, inner_lr=0.1, seed=0,
                           **({"warp": warp} if warp is not None else {}))
    if compiled:
        torch._dynamo.reset()  # compiled graphs are shared by equal models: start afresh
    before = _compiled_graphs()
    learner.meta_step(tasks)
    if compiled:  # it really ran compiled graphs, not a silent eager fallback
        assert _compiled_graphs() > before
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("method,warp", [
    ("warp-leap", WarpGrad("exact")),
    ("warp-leap", WarpGrad("first-order")),
    # passes whose gradient is differentiated again stay eager: MAML's adaptation and the
    # exact shared step (compiled graphs have no double backward)
    ("warp-maml", WarpGrad("first-order", "online")),
    ("warp-leap", WarpGrad("exact", "online", share_step=True)),
])
def test_compiled_forward_gives_the_eager_meta_step(method, warp):
    """compile=True is the same computation: a whole meta-step in float64 (adaptation, the
    meta-objective's inner and outer passes, φ and θ_0 updates) equals eager's to rounding."""
    tasks = [_image_task(seed, dtype=torch.float64) for seed in range(2)]
    eager = _meta_step_parameters(False, method, warp, tasks)
    compiled = _meta_step_parameters(True, method, warp, tasks)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in conv4(3, filters=4).double().parameters()])
    assert (eager - start).abs().max() > 1e-3  # the step did something
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)


def test_compiled_model_copies_run_their_own_parameters():
    model = conv4(3, filters=4, compile=True)
    x = torch.rand(5, 1, 28, 28)
    out = model(x)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), out, rtol=0, atol=0)
    with torch.no_grad():
        for p in clone.warp_parameters().values():
            p.mul_(2.0)
    changed = clone(x)
    assert not torch.allclose(changed, out, atol=1e-3)  # the clone's φ, not the original's
    with clone.eager():
        assert not clone.compile_forward
        torch.testing.assert_close(clone(x), changed, rtol=1e-4, atol=1e-5)
    assert clone.compile_forward


def test_speed_switches_in_a_config_reach_the_learner():
    from warpgrad.experiments.classification import ClassificationExperiment
    from warpgrad.experiments.registry import load_experiment

    _, config = load_experiment("glyphs-multishot", [
        "compile=true", "precision=bf16", "channels_last=true", "buffer_on_disk=true",
        "buffer_dtype=float16", "filters=4", "n_train_tasks=2", "n_test_tasks=1"])
    learner = ClassificationExperiment(config).build_learner("warp-leap")
    model = learner.model
    assert (model.compile_forward, model.precision, model.channels_last) == (True, "bf16", True)
    assert learner.warp.buffer_on_disk and learner.warp.buffer_dtype == torch.float16
    plain = ClassificationExperiment(load_experiment("glyphs-multishot", [
        "filters=4", "n_train_tasks=2", "n_test_tasks=1"])[1]).build_learner("warp-leap")
    assert (plain.model.compile_forward, plain.model.precision) == (False, "fp32")


def test_bf16_shared_step_runs_the_adaptation_in_float32():
    """With share_step the adaptation's step is WarpGrad's step at θ_k, so under bf16 the
    adaptation asks for float32 (``needs_full_precision``): its trajectory is then the fp32
    model's exactly, while a plain bf16 adaptation's is not."""
    from warpgrad.engine import adapt

    task = _image_task(0, batch_size=None)
    torch.manual_seed(0)
    full = conv4(3, filters=8)
    half = copy.deepcopy(full)
    half.precision = "bf16"

    class NeedsFloat32:
        needs_final_loss = False
        needs_full_precision = True

        def observe(self, record):
            pass

    def losses(model, observers):
        return adapt(model, model.init_theta(), task, F.cross_entropy,
                     InnerSGD(model.task_spec, 0.1), 3, observers=observers).losses

    reference = losses(full, [])
    torch.testing.assert_close(losses(half, [NeedsFloat32()]), reference, rtol=0, atol=0)
    assert not torch.equal(losses(half, []), reference)
    online = WarpGrad("first-order", "online", share_step=True).online_observer(
        half, F.cross_entropy, InnerSGD(half.task_spec, 0.1), task, None, 1.0)
    assert online.needs_full_precision
    fresh = WarpGrad("first-order", "online").online_observer(
        half, F.cross_entropy, InnerSGD(half.task_spec, 0.1), task, None, 1.0)
    assert not fresh.needs_full_precision


# -- CUDA graphs: on the CPU the same plumbing runs without capture (tests/test_cuda.py
# replays real graphs) --------------------------------------------------------------------
def _graphed_meta_steps(graphs: bool, warp: WarpGrad | None, method: str = "warp-leap",
                        **options) -> tuple[torch.Tensor, WarpedModel]:
    torch.manual_seed(0)
    model = conv4(3, filters=4, warp=None if warp is None else "conv3x3",
                  cuda_graphs=graphs).double()
    learner = make_learner(method, model, F.cross_entropy, steps=3, inner_lr=0.1, seed=0,
                           **({} if warp is None else {"warp": warp}), **options)
    tasks = [_image_task(s, dtype=torch.float64) for s in range(2)]
    for _ in range(2):  # the second meta-step replays what the first captured
        learner.meta_step(tasks)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), model


@pytest.mark.parametrize("warp,options", [
    (WarpGrad("exact"), {}),
    (WarpGrad("first-order"), {"momentum": 0.9}),
    (WarpGrad("first-order", points_per_update=4, batched=True), {"parallel_tasks": True}),
    (WarpGrad("exact", points_per_update=3), {"parallel_tasks": True}),
    (WarpGrad("no-step"), {"learn_lr": True}),
], ids=["exact", "first-order-momentum", "batched-parallel", "exact-chunks", "no-step"])
def test_graphed_paths_give_the_eager_meta_steps(warp, options):
    eager, _ = _graphed_meta_steps(False, warp, **options)
    graphed, model = _graphed_meta_steps(True, warp, **options)
    torch.testing.assert_close(graphed, eager, rtol=1e-12, atol=1e-14)
    # adaptation steps and φ updates both went through the cache: captured once per shape
    names = {key[0][0] for key in model._graph_cache._graphs}
    assert names == {"adapt_tasks" if options.get("parallel_tasks") else "adapt", "warpgrad"}
    assert model._graph_cache.captures == len(model._graph_cache._graphs)


def test_graphs_stay_out_of_maml_differentiable_adaptation():
    eager, _ = _graphed_meta_steps(False, None, method="maml")
    graphed, model = _graphed_meta_steps(True, None, method="maml")
    torch.testing.assert_close(graphed, eager, rtol=1e-12, atol=1e-14)
    assert getattr(model, "_graph_cache", None) is None or not model._graph_cache._graphs


def test_graph_cache_recaptures_when_what_it_reads_moves_and_returns_fresh_outputs():
    from warpgrad.engine.graphs import GraphCache

    cache = GraphCache(max_graphs=2)
    weight = torch.tensor([2.0, 3.0])
    calls = []

    def scaled(x):
        calls.append(1)
        return [x * weight, None]

    out, missing = cache("scale", scaled, [torch.ones(2)], reads=[weight])
    assert missing is None and torch.equal(out, weight)
    out.add_(100.0)  # the caller's copy: the next call must not see it
    again, _ = cache("scale", scaled, [torch.full((2,), 2.0)], reads=[weight])
    assert torch.equal(again, 2 * weight) and cache.captures == 1
    weight.mul_(10)  # updated in place (as φ is): read at replay, no recapture
    assert torch.equal(cache("scale", scaled, [torch.ones(2)], [weight])[0], weight)
    assert cache.captures == 1
    moved = weight.clone()  # a new tensor (a copied model): captured afresh
    assert torch.equal(cache("scale", scaled, [torch.ones(2)], [moved])[0], moved)
    assert cache.captures == 2
    cache("scale", scaled, [torch.ones(3, 2)], [weight])  # a new shape, beyond max_graphs
    assert cache.captures == 3 and len(cache._graphs) == 2


def test_cuda_graphs_switch_reaches_the_model_and_copies_start_their_own_cache():
    from warpgrad.experiments.classification import ClassificationExperiment
    from warpgrad.experiments.registry import load_experiment

    _, config = load_experiment("glyphs-multishot", [
        "cuda_graphs=true", "filters=4", "n_train_tasks=2", "n_test_tasks=1"])
    learner = ClassificationExperiment(config).build_learner("warp-leap")
    assert learner.model.cuda_graphs
    learner.steps = 1
    learner.meta_step([_image_task(0)])
    assert learner.model._graph_cache._graphs
    clone = copy.deepcopy(learner.model)
    assert clone.cuda_graphs and getattr(clone, "_graph_cache", None) is None


SECOND_ORDER_PATHS = {"convolution": (_conv, _conv._Conv2d), "pooling": (_pool, _pool._MaxPool2d)}
"""The CPU layers whose own autograd functions serve twice-differentiated passes: their
module (with its ``ENABLED`` switch) and the function whose calls show the path was taken."""


@pytest.mark.parametrize("path", SECOND_ORDER_PATHS)
@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_second_order_layers_leave_the_warpgrad_meta_gradient_unchanged(monkeypatch, path,
                                                                        variant):
    """Through the objective's own path: the exact step takes them (its inner gradient runs
    under ``torch.func.grad`` in the second-order scope), the first-order step does not."""
    module, function = SECOND_ORDER_PATHS[path]
    calls = calls_of(monkeypatch, function)
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
        assert bool(calls) == (enabled and variant == "exact")
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", SECOND_ORDER_PATHS)
def test_second_order_layers_leave_mamls_meta_gradient_unchanged(monkeypatch, path):
    """MAML's differentiable adaptation opens the scope; pooling also saves less there."""
    module, function = SECOND_ORDER_PATHS[path]
    calls = calls_of(monkeypatch, function)
    torch.manual_seed(0)
    model = conv4(5, filters=8, warp=None).double()
    opt = InnerSGD(model.task_spec, 0.1, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    train, test = ([torch.rand(12, 1, 28, 28, generator=g, dtype=torch.float64),
                    torch.arange(12) % 5] for _ in range(2))
    task = Task(*train, *test)
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
        assert len(calls) == (2 * 4 if enabled else 0)  # 2 steps x Conv4's 4 layers of each
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
    if path == "pooling":
        assert saved_bytes[1] < 0.8 * saved_bytes[0]
