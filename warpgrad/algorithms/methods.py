"""Methods by name: each is a warp objective paired with an initialisation objective."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from warpgrad.algorithms.base import InitObjective
from warpgrad.algorithms.leap import Leap
from warpgrad.algorithms.learner import MetaLearner
from warpgrad.algorithms.maml import MAML
from warpgrad.algorithms.reptile import Reptile
from warpgrad.algorithms.warpgrad import WarpGrad
from warpgrad.engine.adapt import LossFn
from warpgrad.models.warped import WarpedModel

_INIT: dict[str, Callable[[], InitObjective | None]] = {
    "leap": Leap,
    "reptile": Reptile,
    "maml": MAML,
    "fomaml": lambda: MAML(first_order=True),
    "none": lambda: None,
}

METHODS: dict[str, tuple[bool, str]] = {
    # name: (uses a warp objective, initialisation objective)
    "warp-leap": (True, "leap"),
    "warp-maml": (True, "maml"),
    "warp-reptile": (True, "reptile"),
    "warpgrad": (True, "none"),
    "leap": (False, "leap"),
    "maml": (False, "maml"),
    "fomaml": (False, "fomaml"),
    "reptile": (False, "reptile"),
}
"""Every method :func:`make_learner` accepts."""


def make_learner(
    method: str,
    model: WarpedModel,
    loss_fn: LossFn,
    *,
    steps: int,
    warp: WarpGrad | None = None,
    init: InitObjective | None = None,
    **options: Any,
) -> MetaLearner:
    """A :class:`MetaLearner` for a method by name (see :data:`METHODS`).

    ``warp`` overrides the default ``WarpGrad()`` (exact, offline) of warp methods; ``init``
    overrides the method's initialisation objective (e.g. ``Leap(loss_dimension=False)``).
    ``options`` go to :class:`MetaLearner` (``inner_lr``, ``warp_lr``, ``init_lr``, ``seed``...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    uses_warp, init_name = METHODS[method]
    if uses_warp and not model.warp_names:
        raise ValueError(f"method {method!r} needs a model with warp layers; this one has none")
    if not uses_warp and warp is not None:
        raise ValueError(f"method {method!r} has no warp objective; drop the warp argument")
    if uses_warp and warp is None:
        warp = WarpGrad()
    if init is None:
        init = _INIT[init_name]()
    return MetaLearner(model, loss_fn, steps=steps, warp=warp if uses_warp else None,
                       init=init, **options)
