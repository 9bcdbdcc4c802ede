"""The reference core (warpgrad.models, engine, algorithms, tasks) never needs the
accelerator: importing it loads nothing of ``warpgrad.accel``, and its source holds none of
the device-, layout- or precision-specific code that lives there."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_core_does_not_import_the_accelerator():
    code = ("import sys, warpgrad, warpgrad.models, warpgrad.engine, warpgrad.algorithms, "
            "warpgrad.tasks\n"
            "print(sorted(m for m in sys.modules if m.startswith('warpgrad.accel')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


CORE = ("models", "engine", "algorithms", "tasks")
SPEED_WORDS = ("device.type", "is_cuda", "channels_last", "bfloat16", "bf16", "cuda_graph",
               "CUDAGraph")


def test_the_core_has_no_speed_paths():
    """Device-, layout- and precision-specific code lives in warpgrad/accel only."""
    import warpgrad

    root = os.path.dirname(warpgrad.__file__)
    sources = [os.path.join(folder, name)
               for package in CORE
               for folder, _, names in os.walk(os.path.join(root, package))
               for name in names if name.endswith(".py")]
    assert len(sources) > 10
    found = []
    for path in sources:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        found += [(os.path.relpath(path, root), word) for word in SPEED_WORDS if word in text]
    assert not found
