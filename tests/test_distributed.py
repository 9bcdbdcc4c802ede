"""Task-parallel meta-training on 2 Gloo processes (loopback): the meta-parameters agree with
one process over the same tasks, a torchrun run's directory is a single-process one's, and a
rank that dies stops the other with one clear line; the run then resumes to the same end.

Every launch is bounded (``LAUNCH_TIMEOUT_S``) so that a hang fails instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from click.testing import CliRunner

from tests.helpers import regression_task, tiny_warped_mlp
from warpgrad import WarpGrad, distributed, make_learner
from warpgrad.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 120
WORLD = 2
META_BATCH = 4
ITERATIONS = 3
STEPS = 3
POINTS_PER_TASK = STEPS + 1

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with Gloo")

CASES = {
    # name: (method, WarpGrad regime, points per φ update on one of WORLD ranks, learn_lr)
    "warp-leap offline": ("warp-leap", "offline", META_BATCH // WORLD * POINTS_PER_TASK, False),
    "warp-leap offline shuffled": ("warp-leap", "offline", 1, False),
    "warp-leap online": ("warp-leap", "online", 1, True),
    "leap": ("leap", None, 1, False),
    "maml": ("maml", None, 1, False),
}


def _rendezvous() -> tuple[torch.distributed.TCPStore, dict[str, str]]:
    """A rendezvous store this test process hosts, as torchrun's agent does (a rank that
    exits then takes no store down with it), and the variables that point ranks at it."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    return store, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
                   "TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": str(WORLD)}


def _meta_parameters(case: str, world: int, seed: int = 0) -> torch.Tensor:
    """Train ``case`` for ITERATIONS meta-steps on this process's share of each meta-batch
    (all of it at ``world`` 1, where one φ update then takes ``world`` x the points, the
    same total as one update of ``WORLD`` ranks); returns φ, θ_0 and the learned rates,
    flat. ``seed``: the learner's (batch draws, buffer shuffles)."""
    method, regime, per_update, learn_lr = CASES[case]
    warp = None if regime is None else WarpGrad("exact", regime,
                                                points_per_update=per_update * (WORLD // world))
    learner = make_learner(method, tiny_warped_mlp(), F.mse_loss, steps=STEPS, warp=warp,
                           inner_lr=0.1, warp_lr=0.01, init_lr=0.01, meta_optimizer="adam",
                           learn_lr=learn_lr, seed=seed)
    distributed.wrap(learner)
    for it in range(ITERATIONS):
        tasks = [regression_task(seed=100 * it + i) for i in range(META_BATCH)]
        learner.meta_step(distributed.shard(tasks))
    return torch.cat([p.detach().flatten() for p in learner.model.parameters()]
                     + [p.detach().flatten() for p in learner.optimizer.parameters()])


def _worker(rank: int, rendezvous: dict[str, str], out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(rendezvous, RANK=str(rank), LOCAL_RANK=str(rank))
    assert distributed.init_from_env(timeout_s=LAUNCH_TIMEOUT_S)
    results = {case: _meta_parameters(case, WORLD) for case in CASES}
    learner = make_learner("leap", tiny_warped_mlp(), F.mse_loss, steps=1)
    distributed.wrap(learner)
    results["generator"] = torch.randint(1 << 30, (4,), generator=learner.generator)
    gathered = distributed.all_gather(results)
    evaluated = distributed.split_map(lambda i, x: (distributed.rank(), x * x), list(range(5)))
    if rank == 0:
        torch.save({"ranks": gathered, "evaluated": evaluated}, out)
    distributed.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("distributed") / "ranks.pt"
    _store, rendezvous = _rendezvous()  # the store lives until the ranks are done
    context = mp.start_processes(_worker, args=(rendezvous, str(out)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"2 Gloo processes did not finish within {LAUNCH_TIMEOUT_S} s")
    return torch.load(out)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("case", ["warp-leap offline", "warp-leap online", "leap", "maml"])
def test_two_ranks_equal_one_process_over_the_same_tasks(two_ranks, case):
    """Full-batch tasks: every task's adaptation and gradients are the same on any rank, so
    averaging the ranks' means is the single process's mean up to float rounding (float64).
    Offline: each rank's φ update takes its whole buffer, so one update of both ranks is
    one single-process update over the whole meta-batch's points."""
    ranks = two_ranks["ranks"]
    assert torch.equal(ranks[0][case], ranks[1][case])  # identical steps on every rank
    single = _meta_parameters(case, world=1)
    start = torch.cat([p.detach().flatten() for p in tiny_warped_mlp().parameters()])
    assert _relative(ranks[0][case][: len(start)], start) > 1e-3  # it did meta-learn
    assert _relative(ranks[0][case], single) < 1e-12


def test_offline_shuffled_minibatches_match_one_process_within_its_shuffle_noise(two_ranks):
    """One point per rank per φ update versus two points per update in one process: as many
    updates of as many points, each stratified by rank instead of drawn from the whole
    buffer. The mini-batches differ by construction, so the tolerance is the single
    process's own spread over shuffle seeds: after 3 meta-iterations (24 Adam updates) the
    2-rank run is no farther from the seed-0 single process than 1.5x the mean distance of
    seeds 1-3 from it (measured: 0.7x)."""
    ranks = two_ranks["ranks"]
    case = "warp-leap offline shuffled"
    assert torch.equal(ranks[0][case], ranks[1][case])
    single = _meta_parameters(case, world=1)
    spread = sum((_meta_parameters(case, world=1, seed=s) - single).norm() for s in (1, 2, 3)) / 3
    assert spread > 0 and (ranks[0][case] - single).norm() < 1.5 * spread


def test_ranks_draw_different_batches_and_evaluation_is_gathered_in_order(two_ranks):
    ranks = two_ranks["ranks"]
    assert not torch.equal(ranks[0]["generator"], ranks[1]["generator"])
    assert two_ranks["evaluated"] == [(i % WORLD, i * i) for i in range(5)]


def test_shard_splits_a_meta_batch_without_repeats_and_requires_a_divisor():
    tasks = list(range(6))
    shares = [distributed.shard(tasks, r, 3) for r in range(3)]
    assert sorted(t for share in shares for t in share) == tasks
    assert all(len(s) == 2 for s in shares)
    assert distributed.shard(tasks) == tasks  # one process: the whole meta-batch
    with pytest.raises(distributed.LaunchError, match=r"meta_batch=6 tasks.*processes \(4\)"):
        distributed.shard(tasks, 0, 4)


def test_another_world_size_resumes_except_offline_warpgrad():
    """A 2-rank checkpoint in one process: Leap continues rank 0's stream; offline
    WarpGrad, whose updates depend on the world size, refuses."""
    leap = make_learner("leap", tiny_warped_mlp(), F.mse_loss, steps=1, seed=3)
    state = {"world_size": 2, "rank_generators": [torch.Generator().manual_seed(5).get_state(),
                                                  torch.Generator().get_state()]}
    before = leap.generator.get_state()
    distributed.restore(leap, state, iteration=2)
    assert torch.equal(leap.generator.get_state(), before)
    offline = make_learner("warp-leap", tiny_warped_mlp(), F.mse_loss, steps=1)
    with pytest.raises(distributed.LaunchError, match="written by 2 process"):
        distributed.restore(offline, state, iteration=2)
    online = make_learner("warp-leap", tiny_warped_mlp(), F.mse_loss, steps=1,
                          warp=WarpGrad(regime="online"))
    distributed.restore(online, state, iteration=2)  # accepted


def test_one_process_is_untouched(monkeypatch):
    learner = make_learner("warp-leap", tiny_warped_mlp(), F.mse_loss, steps=1)
    step = learner.warp_optimizer.step
    assert distributed.wrap(learner) is learner and learner.warp_optimizer.step == step
    assert "meta_step" not in vars(learner) and distributed.checkpoint_state(learner) == {}
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.LaunchError, match="WARPGRAD_DIST_TIMEOUT"):
        distributed.timeout_seconds()


# -- the command under torchrun ------------------------------------------------------------------

TINY_SINE = ["sine", "iterations=4", "meta_batch=4", "eval_tasks=5", "hidden=[8]",
             "checkpoint_every=2", "steps=2", "shots=5", "test_shots=10",
             "--method", "warp-leap,leap", "--threads", "1", "--no-progress"]

_FAULTY_RANK_1 = """
import os, sys, time
from warpgrad.algorithms.learner import MetaLearner
if os.environ["RANK"] == "1":  # fails in its 4th meta-iteration, after the checkpoint at 2
    meta_step, calls = MetaLearner.meta_step, []
    def faulty(self, tasks):
        calls.append(1)
        if len(calls) == 4:
            if os.environ["FAULT"] == "exit":
                os._exit(17)
            time.sleep(3600)  # hangs
        return meta_step(self, tasks)
    MetaLearner.meta_step = faulty
from warpgrad.cli import main
main(prog_name="warpgrad", args=sys.argv[1:])
"""


def _env(**extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**inherited, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD}", "-m", "warpgrad", "train",
                           *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S)


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def _results(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    for result in summary["results"].values():
        del result["meta_train_seconds"]
    return summary


@pytest.fixture(scope="module")
def torchrun_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchrun") / "run"
    result = _torchrun(*TINY_SINE, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("run directory:") == 1  # rank 0 alone prints
    return out


def test_a_torchrun_run_directory_is_a_single_process_one(torchrun_dir, tmp_path):
    single = tmp_path / "single"
    result = subprocess.run([sys.executable, "-m", "warpgrad", "train", *TINY_SINE,
                             "--out", single], env=_env(), capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _files(torchrun_dir) == _files(single)
    two, one = _results(torchrun_dir), _results(single)
    assert {k: v for k, v in two.items() if k != "results"} == {
        k: v for k, v in one.items() if k != "results"}
    for method in ("warp-leap", "leap"):
        assert two["results"][method].keys() == one["results"][method].keys()
        assert two["results"][method]["iterations"] == 4
    # Leap on full-batch sine tasks: the same meta-parameters, so the same figures
    for key, value in one["results"]["leap"]["test_loss"].items():
        assert two["results"]["leap"]["test_loss"][key] == pytest.approx(value, rel=1e-5)
    assert (torchrun_dir / "warp-leap/metrics.csv").read_text().splitlines()[0] == (
        single / "warp-leap/metrics.csv").read_text().splitlines()[0]
    state = torch.load(torchrun_dir / "warp-leap/checkpoint.pt", weights_only=False)
    assert set(torch.load(single / "warp-leap/checkpoint.pt", weights_only=False)) < set(state)
    assert state["world_size"] == WORLD and len(state["rank_generators"]) == WORLD
    assert json.loads((torchrun_dir / "environment.json").read_text())["world_size"] == WORLD


def _faulty_run(run_dir: Path, fault: str, timeout_s: int) -> tuple[int, str]:
    """Rank 1 of 2 exits or hangs in its 4th meta-iteration; returns rank 0's exit status
    and stderr (rank 1 is then killed)."""
    _store, rendezvous = _rendezvous()  # the store lives until the ranks are done
    ranks = [subprocess.Popen([sys.executable, "-c", _FAULTY_RANK_1, "train", *TINY_SINE,
                               "--out", str(run_dir)],
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), **rendezvous,
                                       FAULT=fault, WARPGRAD_DIST_TIMEOUT=str(timeout_s)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(WORLD)]
    try:
        stderr = ranks[0].communicate(timeout=LAUNCH_TIMEOUT_S)[1]
        if fault == "exit":
            assert ranks[1].wait(timeout=LAUNCH_TIMEOUT_S) == 17
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert "Traceback" not in stderr, stderr[-2000:]
    return ranks[0].returncode, stderr


def test_a_hung_rank_stops_the_other_after_the_collective_timeout(tmp_path):
    status, stderr = _faulty_run(tmp_path / "hung", "hang", timeout_s=5)
    lines = stderr.strip().splitlines()
    assert status == 1 and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error: rank 0 of 2: ") and "within 5 s" in lines[0]


def test_a_dead_rank_stops_the_other_with_one_line_and_the_run_resumes_to_the_same_end(
        torchrun_dir, tmp_path):
    run_dir = tmp_path / "killed"
    status, stderr = _faulty_run(run_dir, "exit", timeout_s=60)
    lines = stderr.strip().splitlines()
    assert status == 1 and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error: rank 0 of 2: ") and "--resume" in lines[0]
    assert not (run_dir / "summary.json").exists()
    assert torch.load(run_dir / "warp-leap/checkpoint.pt", weights_only=False)["iteration"] == 2

    # offline WarpGrad resumes only at the world size that wrote the checkpoint
    one = tmp_path / "one process"
    shutil.copytree(run_dir, one)
    refused = CliRunner().invoke(main, ["train", "--resume", str(one), "--no-progress"])
    assert refused.exit_code == 2
    assert refused.output.strip().startswith("error: the checkpoint was written by 2 process")
    assert "--nproc_per_node=2" in refused.output and not (one / "summary.json").exists()

    resumed = _torchrun("--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _results(run_dir) == _results(torchrun_dir)
    assert (run_dir / "warp-leap/metrics.csv").read_text() == (
        torchrun_dir / "warp-leap/metrics.csv").read_text()


def test_scale_out_figure_reports_throughput_and_time_in_collectives():
    """Figure 11 at a tiny scale (its format, not its speed): both world sizes, every
    method; one process spends no time in collectives, two do."""
    from warpgrad import bench

    tiny = replace(bench.SCALES["small"], steps=1, batch_size=4, filters=4, threads=1)
    results = bench.run_suite(tiny, bench.Suite(("scale_out",)))
    assert set(results["scale_out"]) == set(bench.SCALE_OUT_METHODS)
    for by_world in results["scale_out"].values():
        one, two = by_world["1"], by_world["2"]
        assert (one["world_size"], two["world_size"]) == (1, WORLD)
        assert one["communication_seconds_per_iteration"] == 0 and "speedup_over_1" not in one
        assert 0 < two["communication_seconds_per_iteration"] < two["seconds_per_iteration"]
        assert two["speedup_over_1"] == pytest.approx(
            one["seconds_per_iteration"] / two["seconds_per_iteration"])
        for r in (one, two):
            assert r["meta_iterations_per_second"] == pytest.approx(
                1 / r["seconds_per_iteration"])
    assert "| scale-out speed-up | leap, 2 process(es) |" in bench.markdown(results)
