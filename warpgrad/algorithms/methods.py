"""Methods by name: each is a warp objective paired with an initialisation objective (and a
few switches), all on the same :class:`MetaLearner` and inner loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from warpgrad.algorithms.base import InitObjective
from warpgrad.algorithms.finetune import FineTune
from warpgrad.algorithms.leap import Leap
from warpgrad.algorithms.learner import MetaLearner
from warpgrad.algorithms.maml import MAML
from warpgrad.algorithms.reptile import Reptile
from warpgrad.algorithms.warpgrad import WarpGrad
from warpgrad.engine.adapt import LossFn
from warpgrad.models.warped import WarpedModel


@dataclass(frozen=True)
class Method:
    """What a method name stands for.

    ``warp``: φ is meta-learned by WarpGrad; ``init``: the objective for θ_0;
    ``warps_by_init``: φ is meta-learned by the init objective instead (T-Net);
    ``learner_defaults``: :class:`MetaLearner` options the method implies (overridable).
    """

    warp: bool
    init: Callable[[], InitObjective | None]
    needs_warps: bool = False
    warps_by_init: bool = False
    learner_defaults: tuple[tuple[str, Any], ...] = ()
    summary: str = ""


METHODS: dict[str, Method] = {
    "warp-leap": Method(True, Leap, True, summary="WarpGrad + Leap initialisation"),
    "warp-maml": Method(True, MAML, True, summary="WarpGrad + MAML initialisation"),
    "warp-reptile": Method(True, Reptile, True, summary="WarpGrad + Reptile initialisation"),
    "warpgrad": Method(True, lambda: None, True, summary="WarpGrad, fixed initialisation"),
    "leap": Method(False, Leap, summary="Leap: shortest adaptation paths"),
    "maml": Method(False, MAML, summary="MAML, second order through the K steps"),
    "fomaml": Method(False, lambda: MAML(first_order=True), summary="first-order MAML"),
    "reptile": Method(False, Reptile, summary="Reptile: θ_0 moves towards θ_K"),
    "meta-sgd": Method(False, MAML, learner_defaults=(("learn_lr", True),
                                                      ("granularity", "element")),
                       summary="MAML with a meta-learned learning rate per parameter"),
    "t-net": Method(False, MAML, True, warps_by_init=True,
                    summary="MAML that also meta-learns (linear) warp layers through the "
                            "adaptation"),
    "finetune": Method(False, FineTune, summary="pretrain θ_0 on the union of tasks, then "
                                                "adapt"),
    "no-meta": Method(False, lambda: None, summary="no meta-learning: adapt from θ_0 as "
                                                   "initialised"),
}
"""Every method :func:`make_learner` accepts."""


def check_methods(methods: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the accepted methods unless every name is one."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; expected any of {sorted(METHODS)}")


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
    overrides the method's initialisation objective (e.g. ``Leap(loss_dimension=False)``,
    ``FineTune(head="head")``). ``options`` go to :class:`MetaLearner` (``inner_lr``,
    ``warp_lr``, ``init_lr``, ``seed``...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if not isinstance(model, WarpedModel):
        raise TypeError(f"make_learner needs a WarpedModel, got {type(model).__name__}; wrap "
                        "your module: WarpedModel(module, warps=[names of its warp "
                        "submodules]) (warps=[] for methods without warps)")
    spec = METHODS[method]
    if spec.needs_warps and not model.warp_names:
        raise ValueError(f"method {method!r} needs a model with warp layers; this one has none")
    if not spec.warp and warp is not None:
        raise ValueError(f"method {method!r} has no warp objective; drop the warp argument")
    if spec.warp and warp is None:
        warp = WarpGrad()
    if init is None:
        init = spec.init()
    options = {**dict(spec.learner_defaults), **options}
    if spec.warps_by_init:
        options["warps_by_init"] = True
    return MetaLearner(model, loss_fn, steps=steps, warp=warp if spec.warp else None,
                       init=init, **options)
