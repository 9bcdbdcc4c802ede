"""PyTorch's CPU threads, following the cores that other processes leave free.

PyTorch's CPU kernels run on OpenMP threads that spin while they wait for each other. When
another process takes one of two cores, every parallel region waits for the thread that
shares a core with it, and a Conv4 meta-iteration at batch 32 runs many times slower, not
twice (docs/performance.md, "Threads that follow the free cores"). No fixed setting suits
both cases: one thread is slower on an idle machine, and passive waiting
(``OMP_WAIT_POLICY=PASSIVE``) is slower on both.

:func:`follow_free_cores` starts a daemon thread that samples the machine's CPU time
(``/proc/stat``) against this process's own (``/proc/self/stat``) about twice a second
and decides how many threads the free cores can carry. The decision is applied by
:func:`apply`, which the accelerated backend calls between passes: OpenMP's thread count
belongs to the thread that sets it, so only the training thread may change it. Linux only;
elsewhere nothing changes. The numbers do not depend on the thread count beyond float
rounding.
"""

from __future__ import annotations

import os
import threading
import time

import torch

_INTERVAL_S = 0.5
_SMOOTHING = 0.5  # weight of the newest sample in the running estimate of others' load


class _Follower:
    def __init__(self, most: int, cores: int) -> None:
        self.most, self.cores = most, cores
        self.wanted = most
        self.applied = torch.get_num_threads()
        self.others = 0.0  # cores busy with other processes (smoothed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="warpgrad-threads",
                                        daemon=True)

    def _watch(self) -> None:
        last = _sample()
        while not self._stop.wait(_INTERVAL_S):
            now = _sample()
            if now is None or last is None:
                return
            elapsed = now[0] - last[0]
            if elapsed <= 0:
                continue
            busy = (now[1] - last[1]) / elapsed  # cores busy, all processes
            own = (now[2] - last[2]) / elapsed  # cores this process used
            others = min(max(busy - own, 0.0), float(self.cores))
            self.others += _SMOOTHING * (others - self.others)
            self.wanted = threads_for(self.cores - self.others, self.wanted, self.most)
            last = now

    def stop(self) -> None:
        self._stop.set()


def threads_for(free: float, current: int, most: int) -> int:
    """Threads for ``free`` idle cores (a fraction; what other processes leave), given the
    ``current`` count and at most ``most``. It steps down as soon as a thread would have to
    share its core with another process for more than half the time, and back up only
    when a whole core has been free for a while, so that it does not flap."""
    if free < current - 0.5:
        return max(1, min(most, int(free + 0.5)))
    if free > current + 0.8:
        return max(1, min(most, int(free + 0.2)))
    return current


_FOLLOWER: list[_Follower] = []


def follow_free_cores(most: int | None = None) -> bool:
    """Let the thread count follow the free cores, between 1 and ``most`` (default: the
    current count), from now on in this process (idempotent). Returns whether it runs:
    ``False`` off Linux, where the CPU times cannot be read."""
    if _FOLLOWER:
        return True
    if _sample() is None:
        return False
    cores = os.cpu_count() or 1
    follower = _Follower(most or torch.get_num_threads(), cores)
    follower._thread.start()
    _FOLLOWER.append(follower)
    return True


def stop_following() -> None:
    """Stop :func:`follow_free_cores` and restore the thread count it started from."""
    if _FOLLOWER:
        follower = _FOLLOWER.pop()
        follower.stop()
        torch.set_num_threads(follower.most)


def apply() -> None:
    """Set the thread count :func:`follow_free_cores` last decided, if it changed; call
    from the thread that runs the passes. Free when nothing is followed or nothing
    changed."""
    if _FOLLOWER:
        follower = _FOLLOWER[0]
        wanted = follower.wanted
        if wanted != follower.applied:
            torch.set_num_threads(wanted)
            follower.applied = wanted


def _sample() -> tuple[float, float, float] | None:
    """(seconds on a monotonic clock, CPU-seconds busy on the whole machine, CPU-seconds
    of this process), or ``None`` where ``/proc`` cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        with open("/proc/self/stat") as f:
            own_fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq: busy is all but idle and iowait (steal,
    # the hypervisor's, is left out: it comes and goes with other machines)
    values = [int(v) for v in fields[1:8]]
    busy = sum(values) - values[3] - values[4]
    own = int(own_fields[11]) + int(own_fields[12])  # utime, stime (fields 14 and 15)
    return time.monotonic(), busy / tick, own / tick
