"""The thread count that follows the cores other processes leave free
(:mod:`warpgrad.accel.threads`): the decision rule, the sampler it reads, the watcher on a
scripted machine, and that only ``apply`` (the training thread) changes PyTorch's count."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from warpgrad.accel import threads


@pytest.mark.parametrize(("free", "current", "most", "expected"), [
    (2.0, 2, 2, 2),    # idle: keep both
    (1.6, 2, 2, 2),    # a little load: a thread still has most of its core
    (1.4, 2, 2, 1),    # over half a core taken: step down
    (1.0, 2, 2, 1),    # one core taken
    (0.1, 2, 2, 1),    # never below one thread
    (1.7, 1, 2, 1),    # not a whole core back yet: stay (no flapping)
    (1.9, 1, 2, 2),    # a whole core back: step up
    (7.9, 1, 4, 4),    # never above most
    (2.9, 4, 4, 3),    # on more cores, one step at a time
])
def test_threads_for(free, current, most, expected):
    assert threads.threads_for(free, current, most) == expected


def test_sample_counts_this_process_cpu():
    first = threads._sample()
    if first is None:
        pytest.skip("no /proc here")
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    second = threads._sample()
    assert second[0] > first[0]
    # at least most of the 0.3 CPU-seconds burnt show up as this process's and as busy
    assert second[2] - first[2] >= 0.2
    assert second[1] - first[1] >= 0.2


def _scripted(monkeypatch, loads):
    """A machine on which other processes use ``loads[i]`` cores in sample interval i."""
    samples = [(0.0, 0.0, 0.0)]
    for load in loads:
        t, busy, own = samples[-1]
        samples.append((t + 1.0, busy + load + 0.5, own + 0.5))  # this process: half a core
    feed = iter(samples)
    done = threading.Event()

    def sample():
        try:
            return next(feed)
        except StopIteration:
            done.set()
            return None  # the watcher stops

    monkeypatch.setattr(threads, "_sample", sample)
    monkeypatch.setattr(threads, "_INTERVAL_S", 0.001)
    return done


def _follow_until(monkeypatch, done):
    """The watcher's decisions, interval by interval, on a 2-core machine."""
    seen = []
    original = threads.threads_for

    def recording(free, current, most):
        seen.append(original(free, current, most))
        return seen[-1]

    monkeypatch.setattr(threads, "threads_for", recording)
    threads._Follower(2, 2)._watch()  # in this thread: it returns when the script ends
    assert done.is_set()
    return seen


def test_watcher_steps_down_under_load_and_back_up(monkeypatch):
    done = _scripted(monkeypatch, [0.0] * 3 + [1.0] * 6 + [0.0] * 8)
    seen = _follow_until(monkeypatch, done)
    assert seen[:3] == [2, 2, 2]
    assert 1 in seen[3:9] and seen[8] == 1  # the busy core is left to the other process
    assert seen[-1] == 2  # and taken back once it is free again


def test_watcher_ignores_a_short_blip(monkeypatch):
    done = _scripted(monkeypatch, [0.0] * 3 + [0.8] + [0.0] * 4)
    # smoothed: one interval at 0.8 cores is not a core taken
    assert set(_follow_until(monkeypatch, done)) == {2}


def test_apply_sets_the_decided_count_in_the_calling_thread(monkeypatch):
    if not threads.follow_free_cores():
        pytest.skip("no /proc here")
    follower = threads._FOLLOWER[0]
    before = torch.get_num_threads()
    try:
        follower._stop.set()  # the test decides, not the machine
        follower._thread.join(timeout=30)
        follower.wanted = 1
        threads.apply()
        assert torch.get_num_threads() == 1
        follower.wanted = 2
        threads.apply()
        assert torch.get_num_threads() == 2
    finally:
        threads._FOLLOWER.clear()
        torch.set_num_threads(before)


def test_apply_without_following_changes_nothing():
    assert not threads._FOLLOWER
    before = torch.get_num_threads()
    threads.apply()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("extra", "follows"), [((), True), (("--threads", "1"), False)])
def test_train_follows_free_cores_unless_threads_are_given(tmp_path, monkeypatch, extra,
                                                            follows):
    from click.testing import CliRunner

    from warpgrad.cli import main

    started, applied = [], []
    real_follow, real_apply = threads.follow_free_cores, threads.apply

    def follow(most=None):
        started.append(most)
        return real_follow(most)

    def counting_apply():
        applied.append(bool(threads._FOLLOWER))
        real_apply()

    monkeypatch.setattr("warpgrad.accel.follow_free_cores", follow)
    monkeypatch.setattr(threads, "apply", counting_apply)
    before = torch.get_num_threads()
    result = CliRunner().invoke(main, ["train", "sine", "-m", "warp-leap", "--out",
                                       str(tmp_path / "run"), "--no-progress", *extra,
                                       "iterations=2", "eval_tasks=2", "meta_batch=2"],
                                catch_exceptions=False)
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert bool(started) == follows
    # the accelerated backend asks between passes, and the follower is running then
    assert applied and any(applied) == follows
    assert not threads._FOLLOWER  # stopped when the command ended
