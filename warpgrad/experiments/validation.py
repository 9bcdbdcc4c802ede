"""The domain rules every experiment config shares, by field name.

Each config dataclass checks its own fields in ``__post_init__`` and then calls
:func:`check_config`, which applies the rules a field's name implies wherever it occurs
(a learning rate is positive in every experiment), so a value outside its domain is rejected
with one message, before a run directory exists, whichever experiment it is for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

METHOD_NAMES: tuple[str, ...] = (
    "warp-leap", "warp-maml", "warp-reptile", "warpgrad", "leap", "maml", "fomaml", "reptile",
    "meta-sgd", "t-net", "finetune", "no-meta")
"""The methods' names, in the order of ``warpgrad.algorithms.METHODS`` (which is torch's side;
tests/test_lazy_imports.py pins the two equal)."""
WARPED_METHODS = frozenset({"warp-leap", "warp-maml", "warp-reptile", "warpgrad", "t-net"})
"""The methods whose model needs warp layers (``METHODS[name].needs_warps``)."""
CHOICES: dict[str, tuple[str, ...]] = {
    "meta_optimizer": ("sgd", "adam"),
    "warp_variant": ("exact", "first-order", "no-step"),
    "warp_regime": ("offline", "online"),
}
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_config(config: Any) -> None:
    """Raise ``ValueError`` naming the first field of the dataclass ``config`` outside its
    domain, and what is accepted."""
    for field in fields(config):
        name, value = field.name, getattr(config, field.name)
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"{name} must be finite, got {value}")
        if (name == "lr" or name.endswith("_lr")) and not value > 0:
            raise ValueError(f"{name} is a learning rate and must be positive, got {value}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ValueError(f"{name} must be one of {list(CHOICES[name])}, got {value!r}")
    momentum = getattr(config, "momentum", 0.0)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    device = getattr(config, "device", "cpu")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if getattr(config, "n_way", 2) < 2:
        raise ValueError(f"n_way must be at least 2 (a task tells classes apart), got "
                         f"{config.n_way}")
    if getattr(config, "seed", 0) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {config.seed}")
    hidden = getattr(config, "hidden", None)
    if hidden is not None:
        methods = getattr(config, "methods", None) or [getattr(config, "method", "")]
        warped = [m for m in methods if m in WARPED_METHODS]
        if warped and not hidden:
            raise ValueError(f"hidden must list one or more layer widths for the warped "
                             f"method(s) {warped} (a warp sits after each hidden layer), e.g. "
                             "hidden=[40,40]")
        if any(width < 1 for width in hidden):
            raise ValueError(f"hidden widths must be positive, got {list(hidden)}")


def check_methods(methods: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the accepted methods unless every name is one."""
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; expected any of {sorted(METHOD_NAMES)}")
