"""Continual sine regression: the sub-task sequence, the forgetting measurement, resume, and
WarpGrad forgetting less than plain SGD from a meta-learned initialisation."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TEST_THREADS
from warpgrad import WarpGrad, adapt, make_learner, mlp
from warpgrad.experiments import continual
from warpgrad.experiments.continual import ContinualConfig, measure
from warpgrad.tasks.continual import ContinualTask, continual_sine_task


def _task(subtasks=3, steps=2, seed=0):
    return continual_sine_task(torch.Generator().manual_seed(seed), subtasks=subtasks,
                               points_per_subtask=4, meta_points_per_subtask=3,
                               test_points_per_subtask=5, steps_per_subtask=steps)


def test_sub_tasks_are_consecutive_intervals_visited_in_order():
    task = _task(subtasks=4, steps=3)
    lows, highs = task.sub_train[0].amin(dim=(1, 2)), task.sub_train[0].amax(dim=(1, 2))
    edges = torch.linspace(-5, 5, 5)
    assert torch.all(lows >= edges[:-1]) and torch.all(highs <= edges[1:])
    assert torch.allclose(task.y_test, task.target(task.x_test))  # noiseless sine
    seen = []
    for _ in range(task.total_steps + 1):  # + the loss at θ_K that Leap asks for
        x, _ = task.train_batch()
        seen.append(next(j for j in range(4) if torch.equal(x, task.sub_train[0][j])))
    assert seen == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    with pytest.raises(RuntimeError, match="rewind"):
        task.train_batch()
    task.rewind()
    assert torch.equal(task.train_batch()[0], task.sub_train[0][0])


def test_warp_meta_loss_covers_the_current_and_every_earlier_sub_task():
    task = _task(subtasks=3, steps=2)
    for step, expected in ((0, 1), (1, 1), (2, 2), (5, 3), (6, 3)):
        inner, metas = task.warp_batches(step)
        j = expected - 1
        assert torch.equal(inner[0], task.sub_train[0][j])
        assert len(metas) == expected
        assert all(torch.equal(m[0], task.sub_meta[0][i]) for i, m in enumerate(metas))


def test_forgetting_matrix_matches_adapting_sub_task_by_sub_task():
    """The observer's matrix equals what SGD on each sub-task in turn gives, rebuilt here by
    adapting on plain one-sub-task tasks one after another."""
    from warpgrad import Task

    torch.manual_seed(0)
    learner = make_learner("reptile", mlp(hidden=(8,), warp=None), F.mse_loss, steps=6,
                           inner_lr=0.05)
    task = _task(subtasks=3, steps=2)
    scores = measure(learner, task)
    theta = learner.model.init_theta().detach()
    rows = []
    for j in range(3):
        piece = Task(task.sub_train[0][j], task.sub_train[1][j], *task.subtask_test(j))
        theta = adapt(learner.model, theta, piece, F.mse_loss, learner.optimizer, 2).theta
        with torch.no_grad():
            rows.append([F.mse_loss(learner.model(x, theta), y).item()
                         for x, y in map(task.subtask_test, range(3))])
    assert torch.allclose(torch.tensor(scores["forgetting_matrix"]), torch.tensor(rows))
    assert scores["first_forgetting"] == pytest.approx(rows[2][0] - rows[0][0])
    assert rows[0][0] != rows[2][0]  # later sub-tasks do move the first one's fit
    with torch.no_grad():
        whole = F.mse_loss(learner.model(task.x_test, theta), task.y_test).item()
    assert scores["whole_range_mse"] == pytest.approx(whole)
    # measuring again (rewound) gives the same numbers
    assert measure(learner, task)["forgetting_matrix"] == scores["forgetting_matrix"]


def test_bad_input_is_rejected_with_what_is_accepted():
    x = torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="same number of sub-tasks"):
        ContinualTask((x, x), (x[:1], x[:1]), (x, x), 2)
    with pytest.raises(ValueError, match="steps_per_subtask"):
        ContinualTask((x, x), (x, x), (x, x), 0)
    with pytest.raises(ValueError, match="subtasks must be at least 1"):
        continual_sine_task(torch.Generator(), subtasks=0)
    for bad, message in (({"method": "maml"}, "expected one of"),
                         ({"subtasks": 0}, "subtasks must be at least 1"),
                         ({"x_range": (1.0, -1.0)}, "low <= high"),
                         ({"warp_regime": "batch"}, "warp_regime must be one of"),
                         ({"plot_tasks": 500}, "plot_tasks")):
        with pytest.raises(ValueError, match=message):
            ContinualConfig(**bad)
    learner = make_learner("leap", mlp(warp=None), F.mse_loss, steps=5)
    with pytest.raises(ValueError, match="sequence is 6 steps"):
        measure(learner, _task(subtasks=3, steps=2))


SEEDS = (0, 1, 2)
BUDGET = dict(iterations=50, meta_batch=4, eval_tasks=40)


def test_warp_leap_forgets_less_than_leap_over_seeds():
    """After the same meta-training budget, Warp-Leap's fit over the whole range is better
    and its first sub-task is forgotten less than with Leap's initialisation and plain SGD.
    Measured (this budget, 40 test curves): whole-range MSE ~3.6-4.1 vs ~4.7-5.7, first
    sub-task forgetting ~3.5-10 vs ~10-13."""
    torch.set_num_threads(TEST_THREADS)
    whole, forgetting = {}, {}
    for method in ("warp-leap", "leap"):
        for seed in SEEDS:
            config = ContinualConfig(method=method, seed=seed, **BUDGET)
            learner = continual.build_learner(config, method)
            tasks = continual.continual_sine_tasks
            generator = torch.Generator().manual_seed(seed + 1)
            for _ in range(config.iterations):
                learner.meta_step(tasks(config.meta_batch, generator, **config.task_options()))
            scores = continual.evaluate(config, learner, continual.held_out_tasks(config),
                                        progress=False)
            whole[method, seed] = scores["whole_range_mse"]["mean"]
            forgetting[method, seed] = scores["first_forgetting"]["mean"]
    for seed in SEEDS:
        assert whole["warp-leap", seed] < 0.9 * whole["leap", seed], (seed, whole)
        assert forgetting["warp-leap", seed] < 0.9 * forgetting["leap", seed], (seed, forgetting)
    mean = {m: sum(forgetting[m, s] for s in SEEDS) / len(SEEDS) for m in ("warp-leap", "leap")}
    assert mean["warp-leap"] < 0.75 * mean["leap"], mean


def _tiny(**kwargs):
    defaults = dict(method="warp-leap", iterations=6, meta_batch=2, subtasks=3,
                    steps_per_subtask=2, eval_tasks=4, plot_tasks=2, checkpoint_every=2,
                    seed=3)
    return ContinualConfig(**{**defaults, **kwargs})


def test_run_writes_its_directory_and_resumes_after_a_kill(tmp_path, monkeypatch):
    config = _tiny()
    straight = continual.run(config, tmp_path / "straight", progress=False)
    for name in ("config.json", "environment.json", "metrics.csv", "checkpoint.pt",
                 "fits.png", "forgetting.png", "summary.json"):
        assert (tmp_path / "straight" / name).is_file(), name
    assert set(straight["results"]) == {"warp-leap", "no-meta"}
    recorded = ContinualConfig(**json.loads((tmp_path / "straight" / "config.json").read_text()))
    assert recorded == config  # the YAML/JSON round trip restores tuples
    table = continual.format_table(straight)
    assert "warp-leap" in table and "no-meta" in table

    calls = {"n": 0}
    real_step = continual.MetaLearner.meta_step

    def dying_step(self, tasks):
        calls["n"] += 1
        if calls["n"] == 4:  # after the checkpoint at iteration 2
            raise KeyboardInterrupt
        return real_step(self, tasks)

    monkeypatch.setattr(continual.MetaLearner, "meta_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        continual.run(config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(continual.MetaLearner, "meta_step", real_step)
    resumed = continual.run(config, tmp_path / "killed", progress=False)
    for method in ("warp-leap", "no-meta"):
        for key in ("whole_range_mse", "first_forgetting", "forgetting_matrix"):
            assert resumed["results"][method][key] == straight["results"][method][key]
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 7)]


def test_warp_method_uses_the_sequential_meta_loss():
    """One WarpGrad meta-step on a continual task averages the loss over sub-tasks 0..j at
    each point: its warp loss equals that average recomputed by hand."""
    torch.manual_seed(0)
    config = _tiny(warp_stride=1, meta_batch=1)
    learner = continual.build_learner(config, "warpgrad")
    task = _task(subtasks=3, steps=2)
    objective = WarpGrad("exact", "online")
    expected = []
    trajectory = []

    class Keep:
        needs_final_loss = False

        def observe(self, record):
            trajectory.append(record)

    adapt(learner.model, learner.model.init_theta(), task, F.mse_loss, learner.optimizer,
          task.total_steps, observers=[Keep()])
    task.rewind()
    for record in trajectory:
        inner, metas = task.warp_batches(record.step)
        assert len(metas) == min(record.step // 2, 2) + 1
        expected.append(objective.point_loss(learner.model, F.mse_loss, learner.optimizer,
                                             record.theta, record.state, inner, metas).item())
    stats = learner.meta_step([task])
    assert stats["warp_loss"] == pytest.approx(sum(expected) / len(expected))
