"""Run directories: the one guarded way to create, lock and write them.

What every run directory guarantees (docs/runs.md):

- **Atomic creation.** :func:`claim` builds a new directory under a temporary name
  (``.NAME.PID.RANDOM.tmp`` beside it) holding ``config.json`` and ``environment.json``, then
  renames it into place: a run killed while it is created leaves no half-made run directory
  (the temporary one is removed by the next run of that name).
- **One process per run directory.** The claim holds an exclusive lock (``flock`` on
  ``RUN_DIR/.lock``) for as long as its :class:`RunDirectory` lives; a second process gets
  one line naming the holder. The kernel drops the lock when its process dies, so the
  ``.lock`` file of a killed run never blocks a resume.
- **Atomic files.** Every file is written to a temporary file and renamed into place;
  temporaries left by a killed write are removed when the directory is claimed again.
- **No non-finite state.** A checkpoint with a non-finite tensor or number is never written,
  and JSON is never written with NaN or infinity (both raise ``FloatingPointError`` naming
  the file and the value); the previous version stays.
- **History kept.** ``environment.json`` keeps the first run's record and appends one entry
  per resume (time, command line, versions, changed config keys).

Errors from the disk (unreadable or foreign checkpoints, a read-only or full disk, a run
directory in use) raise :class:`RunDirError`, whose message names the file and the cause.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from warpgrad._files import atomic_write
from warpgrad.errors import RunDirError

LOCK = ".lock"
_FAULT = "WARPGRAD_FAULT_AFTER"
_fault_counts: dict[str, int] = {}


# -- fault injection (tests only) -------------------------------------------------------------

def _after_write(name: str) -> None:
    """Test hook: ``WARPGRAD_FAULT_AFTER=NAME[:N]`` SIGKILLs this process right after the
    N-th (default first) write called NAME (``*``: any write). Names: ``rundir`` (the
    temporary directory made), ``config``, ``environment``, ``data``, ``checkpoint``,
    ``metrics``, ``eval``, ``summary``, ``plot``; ``NAME.tmp`` fires inside the write, before
    the temporary file is renamed into place. Unset, it costs one dictionary look-up."""
    spec = os.environ.get(_FAULT)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target not in (name, "*"):
        return
    _fault_counts[target] = _fault_counts.get(target, 0) + 1
    if _fault_counts[target] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _write_name(path: Path) -> str:
    return "plot" if path.suffix == ".png" else path.stem


# -- guarded file writes ---------------------------------------------------------------------

def write_file(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """``write(file)`` to ``path`` atomically; a failure of the disk (full, read-only) raises
    :class:`RunDirError` naming ``path`` and the cause, and leaves the old file in place."""
    path = Path(path)
    name = _write_name(path)

    def guarded(file: IO[bytes]) -> None:
        write(file)
        _after_write(f"{name}.tmp")

    try:
        atomic_write(path, guarded)
    except OSError as error:
        raise RunDirError(f"cannot write {path}: {error.strerror or error}"
                          f"{'' if not path.exists() else '; its previous version is kept'}"
                          ) from None
    _after_write(name)
    return path


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Pretty JSON to ``path``, atomically. Raises ``FloatingPointError`` (and writes nothing)
    when ``data`` holds NaN or infinity: JSON has no such numbers."""
    where = _non_finite(data)
    if where is not None:
        raise FloatingPointError(f"{path}: non-finite value at {where} (the run diverged); "
                                 "not written")
    text = json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"
    write_file(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically. Raises ``FloatingPointError`` (and keeps
    the previous checkpoint) when any floating tensor or number in ``state`` is not finite."""
    where = _non_finite(state)
    if where is not None:
        at = f" at meta-iteration {state['iteration']}" if "iteration" in state else ""
        kept = "the previous checkpoint is kept" if Path(path).exists() else "no checkpoint yet"
        raise FloatingPointError(f"diverged{at}: non-finite values in {where}; {path} not "
                                 f"written ({kept})")
    try:
        write_file(path, lambda f: torch.save(state, f))
    except RuntimeError as error:  # torch's zip writer reports a failed write this way
        raise RunDirError(f"cannot write {path}: {str(error).splitlines()[0]}") from None


def save_figure(figure: Any, path: str | os.PathLike) -> None:
    """A matplotlib figure as PNG at ``path``, atomically."""
    write_file(path, lambda f: figure.savefig(f, format="png", dpi=100))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (trusted, our own files); anything else
    (garbage, truncated, empty, unreadable) raises :class:`RunDirError`."""
    try:
        state = torch.load(path, weights_only=False)
    except FileNotFoundError:
        raise
    except PermissionError as error:
        raise RunDirError(f"cannot read {path}: {error.strerror or error}") from None
    except Exception as error:  # a truncated or foreign file: torch raises many kinds
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise RunDirError(f"{path} is not a readable warpgrad checkpoint ({reason}); delete "
                          "it to retrain that method from scratch") from None
    if not isinstance(state, dict):
        raise RunDirError(f"{path} is not a warpgrad checkpoint (it holds a "
                          f"{type(state).__name__}); delete it to retrain that method")
    return state


@contextlib.contextmanager
def restoring(path: str | os.PathLike) -> Iterator[None]:
    """Around restoring a model from the checkpoint at ``path``: a checkpoint of another
    model, experiment or config (missing keys, size mismatches) raises :class:`RunDirError`."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = " ".join(lines[:2]) or type(error).__name__
        raise RunDirError(f"{path} does not fit this run ({type(error).__name__}: "
                          f"{reason}); it was written by another experiment or "
                          "config, delete it to retrain that method") from None


def _non_finite(value: Any, where: str = "") -> str | None:
    """Where the first NaN or infinity in a nest of dicts, lists and tensors is, or ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where or 'the value'} ({value})"
    if isinstance(value, torch.Tensor):
        floating = value.is_floating_point() or value.is_complex()
        return None if not floating or bool(torch.isfinite(value.detach()).all()) else (
            where or "a tensor")
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


# -- the directory ---------------------------------------------------------------------------

class RunDirectory:
    """A run directory this process holds the lock of (released by :meth:`release`, on
    garbage collection or when the process ends)."""

    def __init__(self, path: Path, lock: IO[str]) -> None:
        self.path, self._lock = path, lock

    def release(self) -> None:
        if not self._lock.closed:
            self._lock.close()  # closing the descriptor drops the flock

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim(path: str | os.PathLike, record: dict[str, Any], *, seed: int) -> RunDirectory:
    """Create the run directory ``path`` with ``config.json`` (``record``) and
    ``environment.json``, atomically, or, when it exists, lock it for a resume: remove stale
    temporaries, append this process to ``environment.json`` and rewrite ``config.json``
    (a resume may change the whitelisted keys). Raises :class:`RunDirError`."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        directory = open_existing(path)
        _record_resume(path, record, seed)
        write_json(path / "config.json", record)
        return directory
    return _create(path, record, seed)


def open_existing(path: str | os.PathLike) -> RunDirectory:
    """Lock an existing run directory (for a resume or a re-evaluation), after checking that
    it is a writable folder, and remove the temporaries killed writes left in it."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} "
                          f"{'is not a folder' if path.exists() else 'does not exist'}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {path} is read-only; make it writable or copy it")
    directory = RunDirectory(path, _lock(path))
    for stale in (*path.glob(".*.tmp"), *path.glob("*/.*.tmp")):
        with contextlib.suppress(OSError):
            stale.unlink()  # under the lock, no write of ours is in progress
    return directory


def _create(path: Path, record: dict[str, Any], seed: int) -> RunDirectory:
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunDirError(f"cannot create run directory {path}: {existing} is a file, not a "
                          "folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot create run directory {path}: {existing} is read-only")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create run directory {path}: {error.strerror}") from None
    _remove_stale_builds(path)
    build = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    build.mkdir()
    _after_write("rundir")
    lock = _lock(build)  # the descriptor, and its lock, follow the rename
    write_json(build / "config.json", record)
    write_json(build / "environment.json", environment(seed))
    try:
        os.rename(build, path)  # fails if another process made it meanwhile
    except OSError:
        lock.close()
        shutil.rmtree(build, ignore_errors=True)
        raise RunDirError(f"run directory {path} was just created by another process; use "
                          "another --out") from None
    return RunDirectory(path, lock)


def _remove_stale_builds(path: Path) -> None:
    """Temporary run directories of this name whose process is dead."""
    for build in path.parent.glob(f".{path.name}.*.tmp"):
        pid = build.name[len(path.name) + 2:].split(".")[0]
        if build.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(build, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _lock(folder: Path) -> IO[str]:
    try:
        lock = open(folder / LOCK, "a+")  # noqa: SIM115 (held for the directory's life)
    except OSError as error:
        raise RunDirError(f"cannot lock run directory {folder}: {error.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RunDirError(f"run directory {folder} is in use by {holder}; wait for it to "
                          "finish or stop it (one process per run directory)") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"process {os.getpid()} (since {_now()})\n")
    lock.flush()
    return lock


def _record_resume(path: Path, record: dict[str, Any], seed: int) -> None:
    env_path, entry = path / "environment.json", environment(seed)
    try:
        first = json.loads(env_path.read_text())
    except (OSError, ValueError):
        first = None
    if not isinstance(first, dict):  # missing or damaged: start the log again
        write_json(env_path, {**entry, "resumes": []})
        return
    try:
        before = json.loads((path / "config.json").read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        before = {}
    changed = {key: [before[key], value] for key, value in record.get("config", {}).items()
               if key in before and before[key] != value}
    first.setdefault("resumes", []).append({**entry, "config_changes": changed})
    write_json(env_path, first)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def environment(seed: int) -> dict[str, Any]:
    """What ran: time (UTC), versions (warpgrad, its git commit in a checkout, Python,
    PyTorch), platform, threads, GPU, processes (torchrun's world size), seed and command
    line."""
    from warpgrad import __version__, distributed

    return {"time": _now(), "warpgrad": __version__, "git_commit": _git_commit(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "world_size": distributed.world_size(), "seed": seed, "argv": sys.argv}


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None  # an installed package, not a checkout
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
