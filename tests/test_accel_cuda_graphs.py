"""``accel.convert(model, cuda_graphs=True)``: adaptation steps and offline WarpGrad updates
go through the backend's GraphCache (warpgrad.accel.cuda_graphs). On the CPU the same
plumbing runs without capture (tests/test_cuda.py replays real graphs), so there it must
give exactly the meta-steps of the same converted model without graphs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from warpgrad import WarpedModel, accel, conv4, make_learner
from warpgrad.accel.cuda_graphs import GraphCache, reads_of, rehearsing
from warpgrad.algorithms import WarpGrad
from warpgrad.tasks import Task


def _image_task(seed: int, dtype: torch.dtype = torch.float64) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(18, 1, 28, 28, generator=g, dtype=dtype)
    y = torch.arange(3).repeat_interleave(6)
    return Task(x[::2], y[::2], x[1::2], y[1::2], batch_size=8)


def _graphed_meta_steps(graphs: bool, warp: WarpGrad | None, method: str = "warp-leap",
                        **options) -> tuple[torch.Tensor, WarpedModel]:
    torch.manual_seed(0)
    model = accel.convert(conv4(3, filters=4, warp=None if warp is None else "conv3x3"
                                ).double(), cuda_graphs=graphs)
    learner = make_learner(method, model, F.cross_entropy, steps=3, inner_lr=0.1, seed=0,
                           **({} if warp is None else {"warp": warp}), **options)
    tasks = [_image_task(s) for s in range(2)]
    for _ in range(2):  # the second meta-step replays what the first captured
        learner.meta_step(tasks)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), model


@pytest.mark.parametrize("warp,options", [
    (WarpGrad("exact"), {}),
    (WarpGrad("first-order"), {"momentum": 0.9}),
    (WarpGrad("first-order", points_per_update=4, batched=True), {}),
    (WarpGrad("exact", points_per_update=3), {}),
    (WarpGrad("no-step"), {"learn_lr": True}),
], ids=["exact", "first-order-momentum", "batched", "exact-chunks", "no-step"])
def test_graphed_paths_give_the_eager_meta_steps(warp, options):
    eager, plain = _graphed_meta_steps(False, warp, **options)
    assert plain.backend.graphs is None
    graphed, model = _graphed_meta_steps(True, warp, **options)
    torch.testing.assert_close(graphed, eager, rtol=1e-12, atol=1e-14)
    # adaptation steps and φ updates both went through the cache: captured once per shape
    cache = model.backend.graphs
    names = {key[0][0] for key in cache._graphs}
    assert names == {"adapt", "backward"}
    assert cache.captures == len(cache._graphs)


def test_graphs_stay_out_of_maml_differentiable_adaptation():
    eager, _ = _graphed_meta_steps(False, None, method="maml")
    with pytest.warns(RuntimeWarning, match="run eagerly for differentiable adaptation"):
        graphed, model = _graphed_meta_steps(True, None, method="maml")
    torch.testing.assert_close(graphed, eager, rtol=1e-12, atol=1e-14)
    assert model.backend.graphs is not None and not model.backend.graphs._graphs


def test_graphs_stay_out_of_steps_that_update_batch_norm_statistics():
    """Running statistics are updated in place: those steps run eagerly."""
    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = accel.convert(conv4(3, filters=4, batch_norm="running").double(),
                              cuda_graphs=graphs)
        learner = make_learner("warp-leap", model, F.cross_entropy, steps=2, inner_lr=0.1,
                               seed=0, warp=WarpGrad("first-order"))
        if graphs:
            with pytest.warns(RuntimeWarning, match="run eagerly for running batch-norm"):
                learner.meta_step([_image_task(s) for s in range(2)])
        else:
            learner.meta_step([_image_task(s) for s in range(2)])
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        if graphs:
            assert not [k for k in model.backend.graphs._graphs if k[0][0] == "adapt"]
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-14)


def test_graph_cache_recaptures_when_what_it_reads_moves_and_returns_fresh_outputs():
    cache = GraphCache(max_graphs=2)
    weight = torch.tensor([2.0, 3.0])
    calls = []

    def scaled(x):
        calls.append(rehearsing())
        return [x * weight, None]

    out, missing = cache("scale", scaled, [torch.ones(2)], reads=[weight])
    assert missing is None and torch.equal(out, weight)
    assert calls == [True] and not rehearsing()  # the CPU rehearses in place of a replay
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


def test_reads_of_are_the_modules_parameters_and_buffers():
    model = conv4(3, filters=4, batch_norm="running")
    reads = reads_of(model)
    assert len(reads) == len(list(model.parameters())) + len(list(model.buffers()))
    assert all(any(r is t for t in (*model.parameters(), *model.buffers())) for r in reads)


def test_cuda_graphs_switch_reaches_the_model_and_copies_start_their_own_cache():
    from warpgrad.experiments.classification import ClassificationExperiment
    from warpgrad.experiments.registry import load_experiment

    _, config = load_experiment("glyphs-multishot", [
        "cuda_graphs=true", "filters=4", "n_train_tasks=2", "n_test_tasks=1"])
    learner = ClassificationExperiment(config).build_learner("warp-leap")
    assert learner.model.backend.cuda_graphs
    learner.steps = 1
    learner.meta_step([_image_task(0, torch.float32)])
    assert learner.model.backend.graphs._graphs
    clone = copy.deepcopy(learner.model)
    assert clone.backend.cuda_graphs and clone.backend is not learner.model.backend
    assert clone.backend.graphs is not learner.model.backend.graphs
    assert not clone.backend.graphs._graphs  # a copy captures its own
