"""The GPU paths give the CPU's results. Skipped where there is no CUDA device (CI has none);
``benchmarks/gpu.sh`` runs this file first on a lent GPU machine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from warpgrad import Task, conv4, make_learner
from warpgrad.algorithms import WarpGrad

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tasks(device: str, dtype: torch.dtype) -> list[Task]:
    tasks = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(18, 1, 28, 28, generator=g, dtype=dtype)
        y = torch.arange(3).repeat_interleave(6)
        tasks.append(Task(x[::2].to(device), y[::2].to(device), x[1::2].to(device),
                          y[1::2].to(device), batch_size=8, meta_split="train"))
    return tasks


def _meta_step(device: str, warp: WarpGrad, dtype: torch.dtype = torch.float64,
               **model_options) -> torch.Tensor:
    torch.manual_seed(0)
    model = conv4(3, filters=8, **model_options).to(dtype).to(device)
    learner = make_learner("warp-leap", model, F.cross_entropy, steps=3, inner_lr=0.1, seed=0,
                           warp=warp)
    learner.meta_step(_tasks(device, dtype))
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()


@pytest.mark.parametrize("warp", [
    WarpGrad("exact"), WarpGrad("first-order"), WarpGrad("exact", buffer_on_disk=True),
    WarpGrad("first-order", points_per_update=4, batched=True),
    WarpGrad("exact", "online", share_step=True),
])
def test_meta_step_on_cuda_is_the_cpu_meta_step(warp):
    cpu = _meta_step("cpu", warp)
    gpu = _meta_step("cuda", warp)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in conv4(3, filters=8).double().parameters()])
    assert (cpu - start).abs().max() > 1e-3
    torch.testing.assert_close(gpu, cpu, rtol=1e-7, atol=1e-9)


def test_compiled_model_on_cuda_matches_eager():
    eager = _meta_step("cuda", WarpGrad("first-order"), torch.float32)
    compiled = _meta_step("cuda", WarpGrad("first-order"), torch.float32, compile=True)
    assert (compiled - eager).norm() <= 1e-4 * eager.norm()


def test_bench_runs_on_cuda_and_reports_device_memory(tmp_path):
    from warpgrad import bench

    results = bench.main("small", tmp_path, sections=("meta_iteration", "warped_step"),
                         device="cuda", log=lambda line: None)
    assert results["machine"]["gpu"]
    for r in results["meta_iteration"].values():
        assert r["peak_device_mb"] > 0
    assert results["warped_step"]["warped_ms"] > 0
