"""The GPU paths give the CPU's results: the reference model and the converted one
(``accel.convert``) on a GPU, and CUDA graphs replayed there, give the reference model's
CPU meta-steps. Skipped where there is no CUDA device (CI has none); ``benchmarks/gpu.sh``
runs this file first on a lent GPU machine."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from warpgrad import Task, accel, conv4, make_learner
from warpgrad.algorithms import WarpGrad

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tasks(device: str, dtype: torch.dtype) -> list[Task]:
    tasks = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        # drawn in float64 and cast: torch.rand draws other numbers in float32
        x = torch.rand(18, 1, 28, 28, generator=g, dtype=torch.float64).to(dtype)
        y = torch.arange(3).repeat_interleave(6)
        tasks.append(Task(x[::2].to(device), y[::2].to(device), x[1::2].to(device),
                          y[1::2].to(device), batch_size=8, meta_split="train"))
    return tasks


def _meta_step(device: str, warp: WarpGrad, dtype: torch.dtype = torch.float64,
               meta_steps: int = 1, accelerate: bool = False, **convert_options
               ) -> torch.Tensor:
    """θ_0 and φ after ``meta_steps`` Warp-Leap meta-steps of the reference model, or of
    its converted twin (``accelerate``), on ``device``."""
    torch.manual_seed(0)
    model = conv4(3, filters=8).to(dtype)
    if accelerate:
        model = accel.convert(model, **convert_options)
    model = model.to(device)
    learner = make_learner("warp-leap", model, F.cross_entropy, steps=3, inner_lr=0.1, seed=0,
                           warp=warp, warp_lr=0.1)
    for _ in range(meta_steps):
        learner.meta_step(_tasks(device, dtype))
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()


@pytest.mark.parametrize("accelerate", [False, True], ids=["reference", "converted"])
@pytest.mark.parametrize("warp", [
    WarpGrad("exact"), WarpGrad("first-order"), WarpGrad("exact", buffer_on_disk=True),
    WarpGrad("first-order", points_per_update=4, batched=True),
    WarpGrad("exact", points_per_update=4, batched=True),  # vmapped, batch norm primitive
    WarpGrad("exact", "online", share_step=True),
])
def test_meta_step_on_cuda_is_the_cpu_meta_step(warp, accelerate):
    cpu = _meta_step("cpu", warp)
    gpu = _meta_step("cuda", warp, accelerate=accelerate)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in conv4(3, filters=8).double().parameters()])
    assert (cpu - start).abs().max() > 1e-3
    torch.testing.assert_close(gpu, cpu, rtol=1e-7, atol=1e-9)


def test_bench_runs_on_cuda_and_reports_device_memory(tmp_path):
    from warpgrad import bench

    results = bench.main("small", tmp_path, sections=("meta_iteration", "warped_step"),
                         device="cuda", log=lambda line: None)
    assert results["machine"]["gpu"]
    for r in results["meta_iteration"].values():
        assert r["peak_device_mb"] > 0
    assert results["warped_step"]["warped_ms"] > 0


@pytest.mark.parametrize("warp", [
    WarpGrad("exact"), WarpGrad("first-order"),
    WarpGrad("first-order", points_per_update=4, batched=True),
    WarpGrad("exact", points_per_update=3),
], ids=["exact", "first-order", "batched", "exact-chunks"])
def test_cuda_graphs_replay_the_cpu_meta_steps(warp):
    """Real capture and replay (two meta-steps: the second replays the first's graphs) give
    the reference model's CPU float64 meta-steps; no pass fell back to eager."""
    cpu = _meta_step("cpu", warp, meta_steps=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gpu = _meta_step("cuda", warp, meta_steps=2, accelerate=True, cuda_graphs=True)
    assert not [w for w in seen if "could not capture" in str(w.message)
                or "run eagerly" in str(w.message)]
    torch.testing.assert_close(gpu, cpu, rtol=1e-7, atol=1e-9)


def test_host_to_gpu_copies_keep_every_value():
    """The pinned, non-blocking copies of batch indices and augmentation parameters
    (warpgrad.accel.transfer.to_device) deliver the host's values, also when the host
    reuses its memory at once."""
    from warpgrad.accel.transfer import to_device

    for _ in range(20):
        host = [torch.randint(0, 10**6, (128,)), torch.rand(128, 2, 3, dtype=torch.float64)]
        copies = [to_device(t, "cuda") for t in host]
        expected = [t.clone() for t in host]
        for t in host:
            t.zero_()  # the host's tensors change right after the copies were queued
        for copy, value in zip(copies, expected):
            assert copy.is_cuda and torch.equal(copy.cpu(), value)


def test_batches_drawn_ahead_on_cuda_are_the_batches_drawn_one_at_a_time():
    """Drawing ahead on a GPU (one pinned copy of many draws' indices and augmentation
    parameters, one gather, one resampling) gives the batches of one draw at a time, and the
    CPU's batches up to the GPU's resampling arithmetic."""
    from warpgrad.accel import prefetch
    from warpgrad.data import RandomAffine

    transform = RandomAffine()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40)

    def task(device: str) -> Task:
        return Task(x.to(device), y.to(device), x[:4].to(device), y[:4].to(device),
                    batch_size=16, meta_split="train", transform=transform)

    splits = ["train", "meta"] * 12
    gpu, cpu = task("cuda"), task("cpu")
    ahead = list(prefetch.lookahead([(gpu, s) for s in splits],
                                    torch.Generator().manual_seed(1), len(splits)))
    one_by_one = torch.Generator().manual_seed(1)
    for split, (xb, yb) in zip(splits, ahead, strict=True):
        expected = gpu.train_batch(one_by_one) if split == "train" else gpu.meta_batch(one_by_one)
        assert xb.is_cuda and torch.equal(xb, expected[0]) and torch.equal(yb, expected[1])
    on_cpu = list(prefetch.lookahead([(cpu, s) for s in splits],
                                     torch.Generator().manual_seed(1), len(splits)))
    for (xg, yg), (xc, yc) in zip(ahead, on_cpu, strict=True):
        assert torch.equal(yg.cpu(), yc)
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-5)
    # the accelerated backend draws a GPU task's batches ahead too (32 MB by default)
    backend = accel.AcceleratedBackend()
    assert backend._window(gpu) > backend._window(cpu) > 1
    ours = list(backend.train_batches(gpu, 6, torch.Generator().manual_seed(2)))
    reference = torch.Generator().manual_seed(2)
    for xb, yb in ours:
        expected = gpu.train_batch(reference)
        assert torch.equal(xb, expected[0]) and torch.equal(yb, expected[1])
