"""Figure 12, ``protocols``: one meta-iteration of each method at the protocols people run,
not only the paper's full multi-shot one (figure 1): seconds per meta-iteration, through
the experiments' own builders (the command's data, models and learners), and each warp
method's overhead over the bare compute of the same passes (:func:`bare_meta_iteration`
on the experiment's own batches).

- ``scaled-multishot``: Conv4-64 with 3x3 conv warps, 20-way glyph alphabets, batch 32,
  K = 20, meta-batch 5, offline WarpGrad over every point, one point per φ update (the
  original's semantics): first-order and exact Warp-Leap, and Leap.
- ``fewshot``: the shipped ``glyphs-fewshot`` experiment (5-way 1-shot, Conv4-32, 5 steps,
  meta-batch 4, 6 points per update, batched): Warp-MAML and MAML, and their ratio.
- ``sine``: the shipped ``sine`` experiment (MLP 40-40, 5 steps): Warp-Leap and Leap.

The full multi-shot protocol is figure 1. At ``--scale small`` every protocol runs at
smaller shapes (a check of the figure, not its numbers); its targets are judged at full.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from warpgrad.bench import common
from warpgrad.bench.common import Scale, case, measure


@dataclass(frozen=True)
class Protocol:
    """An experiment with overrides (``full``, and ``small`` on top of them at small
    scale), the methods timed, each a label with its own overrides, and ``reps``, the
    meta-iterations timed per method at full scale (one at small scale)."""

    experiment: str
    full: tuple[str, ...]
    small: tuple[str, ...]
    methods: tuple[tuple[str, str, tuple[str, ...]], ...]  # (label, method, overrides)
    # a protocol whose meta-iteration is short gets more: one process runs 5-10% faster or
    # slower than the next, and a median of three such runs moved sine's ratio by ±0.06
    reps: int = 3


_SCALED = ("filters=64", "batch_size=32", "steps=20", "meta_batch=5", "point_stride=1",
           "points_per_update=1")
PROTOCOLS: dict[str, Protocol] = {
    "scaled-multishot": Protocol(
        "glyphs-multishot", _SCALED,
        ("filters=16", "steps=5", "meta_batch=2"),
        (("warp-leap-first-order", "warp-leap", ("warp_variant=first-order",)),
         ("warp-leap-exact", "warp-leap", ("warp_variant=exact",)),
         ("leap", "leap", ()))),
    "fewshot": Protocol(
        "glyphs-fewshot", (), ("filters=8", "meta_batch=2", "steps=2"),
        (("warp-maml", "warp-maml", ()), ("maml", "maml", ())), reps=7),
    "sine": Protocol(
        "sine", (), ("meta_batch=2",),
        (("warp-leap", "warp-leap", ()), ("leap", "leap", ())), reps=21),
}


_SECONDS_TARGETS = ("scaled-multishot",)  # targets.json's protocol_seconds are its methods'


def _overrides(scale: Scale, protocol: Protocol, extra: tuple[str, ...]) -> list[str]:
    small = protocol.small if scale.name == "small" else ()
    reference = ("accelerate=false",) if scale.reference else ()
    return [*protocol.full, *small, *extra, *reference]


def _experiment(scale: Scale, name: str, label: str) -> tuple[str, str, Any, Any]:
    """Method ``label`` of protocol ``name``: its method name, the experiment's kind, config
    and experiment object."""
    from warpgrad.experiments import registry

    protocol = PROTOCOLS[name]
    _, method, extra = next(m for m in protocol.methods if m[0] == label)
    kind, config = registry.load_experiment(protocol.experiment,
                                            _overrides(scale, protocol, extra),
                                            methods=[method], device=scale.device)
    return method, kind, config, registry.KINDS[kind].experiment(config, protocol.experiment)


def _warmed_up(scale: Scale, name: str, label: str) -> tuple[Any, Callable[[], Any]]:
    """The learner of method ``label`` of protocol ``name`` after one meta-iteration, and
    a draw of the next meta-batch (seeded: every case draws the same batches)."""
    method, _, _, experiment = _experiment(scale, name, label)
    learner = experiment.build_learner(method)
    generator = torch.Generator().manual_seed(0)

    def draw() -> Any:
        return experiment.sample_meta_batch(generator)

    learner.meta_step(draw())
    return learner, draw


@case("protocol")
def case_protocol(scale: Scale, name: str, label: str, reps: int) -> dict[str, float]:
    """``reps`` meta-iterations of one method of protocol ``name``, after one to warm up:
    ``seconds`` (the median), ``min_seconds``, ``peak_rss_mb``."""
    learner, draw = _warmed_up(scale, name, label)
    times, peak = [], 0.0
    for _ in range(reps):
        tasks = draw()
        r = measure(lambda tasks=tasks: learner.meta_step(tasks))
        times.append(r["seconds"])
        peak = max(peak, r["peak_rss_mb"])
    return {"seconds": statistics.median(times), "min_seconds": min(times),
            "peak_rss_mb": peak}


@case("protocol_operators")
def case_protocol_operators(scale: Scale, name: str, label: str) -> dict[str, float]:
    """One meta-iteration of method ``label`` of protocol ``name``, after one to warm up,
    with every operator call timed where it runs (:func:`~warpgrad.bench.conv_calls.
    time_operators`): ``seconds`` inside the operators, ``convolution_seconds``, ``calls``,
    ``wall_seconds``."""
    from warpgrad.bench.conv_calls import time_operators

    learner, draw = _warmed_up(scale, name, label)
    tasks = draw()
    return vars(time_operators(lambda: learner.meta_step(tasks)))


@case("protocol_bare")
def case_protocol_bare(scale: Scale, name: str, label: str, reps: int) -> dict[str, float]:
    """The bare compute of one meta-iteration of method ``label`` of protocol ``name``
    (:func:`bare_meta_iteration` on one meta-batch of the experiment's own tasks), after one
    to warm up: ``seconds``, the median of ``reps``, as the method's own time is."""
    method, kind, config, experiment = _experiment(scale, name, label)
    generator = torch.Generator().manual_seed(0)
    tasks = experiment.sample_meta_batch(generator)
    batches = [(task.train_batch(generator), task.meta_batch(generator)) for task in tasks]
    if kind == "sine":
        forward, loss_fn = _mlp_forward, F.mse_loss
        theta, phi = _mlp_params(config.hidden)
    else:
        from warpgrad.bench.overhead import bare_forward, bare_params

        forward, loss_fn = bare_forward, F.cross_entropy
        theta, phi = bare_params(config.filters, True, config.n_way)
    spec = BareSpec(steps=config.steps, inner_lr=config.inner_lr,
                    variant=config.warp_variant, maml=method == "warp-maml",
                    points_per_update=config.points_per_update)
    device = theta[0].device
    batches = [tuple((x.to(device), y.to(device)) for x, y in pair) for pair in batches]
    bare_meta_iteration(forward, loss_fn, theta, phi, batches[:1], replace(spec, steps=1))
    times = [measure(lambda: bare_meta_iteration(forward, loss_fn, theta, phi, batches,
                                                 spec))["seconds"] for _ in range(reps)]
    return {"seconds": statistics.median(times)}


@dataclass(frozen=True)
class BareSpec:
    """What one bare meta-iteration computes: ``steps`` SGD steps of ``inner_lr`` per task,
    WarpGrad's ``variant`` at every trajectory point, φ stepped every ``points_per_update``
    points; ``maml``: the initialisation's gradient is second-order MAML's (else Leap's,
    which needs no extra pass but a forward at θ_K)."""

    steps: int
    inner_lr: float
    variant: str
    maml: bool
    points_per_update: int


Forward = Callable[..., Tensor]


def bare_meta_iteration(forward: Forward, loss_fn: Callable[[Tensor, Tensor], Tensor],
                        theta0: list[Tensor], phi0: list[Tensor],
                        batches: list[tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]],
                        spec: BareSpec) -> list[Tensor]:
    """The passes of one Warp-Leap or Warp-MAML meta-iteration on plain tensors, written
    out: per task (its ``(support, query)`` batches) ``spec.steps`` warped SGD steps on the
    support batch (keeping their graph for MAML, whose query loss is then backpropagated to
    θ_0); then at each of the ``tasks * (steps + 1)`` points, one at a time, the inner
    forward+backward on the support batch (``create_graph`` for the exact variant), the
    step, the query loss's backward into φ, and φ's SGD step every ``points_per_update``
    points. ``forward(theta, phi, x)`` is the network. Returns φ after its updates."""
    from warpgrad.bench.overhead import second_order

    lr = spec.inner_lr
    points: list[tuple[int, list[Tensor]]] = []
    for i, ((x, y), (qx, qy)) in enumerate(batches):
        start = [t.clone().requires_grad_(spec.maml) for t in theta0]
        theta = start
        points.append((i, theta))
        for _ in range(spec.steps):
            if not spec.maml:
                theta = [t.detach().requires_grad_() for t in theta]
            with second_order() if spec.maml else nullcontext():
                loss = loss_fn(forward(theta, phi0, x), y)
                grads = torch.autograd.grad(loss, theta, create_graph=spec.maml)
            with nullcontext() if spec.maml else torch.no_grad():
                theta = [t - lr * d for t, d in zip(theta, grads)]
            points.append((i, theta))
        if spec.maml:
            torch.autograd.grad(loss_fn(forward(theta, phi0, qx), qy), start)
        else:
            with torch.no_grad():
                loss_fn(forward(theta, phi0, x), y)
    phi = [w.clone().requires_grad_() for w in phi0]
    exact = spec.variant == "exact"
    for first in range(0, len(points), spec.points_per_update):
        chunk = points[first:first + spec.points_per_update]
        total = 0.0
        for i, point in chunk:
            (x, y), (qx, qy) = batches[i]
            theta = [t.detach().requires_grad_() for t in point]
            with second_order() if exact else nullcontext():
                inner = loss_fn(forward(theta, phi if exact else phi0, x, True), y)
                grads = torch.autograd.grad(inner, theta, create_graph=exact)
            stepped = [t - lr * d for t, d in zip(theta, grads)]
            total = total + loss_fn(forward(stepped, phi, qx), qy)
        phi_grads = torch.autograd.grad(total / len(chunk), phi)
        with torch.no_grad():
            for p, d in zip(phi, phi_grads):
                p.sub_(lr * d)
    return [p.detach() for p in phi]


def _mlp_params(hidden: list[int] | tuple[int, ...]) -> tuple[list[Tensor], list[Tensor]]:
    """The sine MLP's parameters as plain tensors: θ (per hidden layer ``[h, h_in]`` and
    ``[h]``, the head ``[1, h]`` and ``[1]``) and φ (an identity linear warp per hidden
    layer, ``[h, h]`` and ``[h]``)."""
    g = torch.Generator().manual_seed(0)
    theta: list[Tensor] = []
    phi: list[Tensor] = []
    width = 1
    for h in hidden:
        theta += [torch.randn(h, width, generator=g) / width ** 0.5, torch.zeros(h)]
        phi += [torch.eye(h), torch.zeros(h)]
        width = h
    theta += [torch.randn(1, width, generator=g) / width ** 0.5, torch.zeros(1)]
    device = common.SWITCHES["device"]
    return [t.to(device) for t in theta], [p.to(device) for p in phi]


def _mlp_forward(theta: list[Tensor], phi: list[Tensor], x: Tensor,
                 full_precision: bool = False) -> Tensor:
    """The sine MLP on plain tensors, ``x [B, 1]`` to ``[B, 1]``: linear, ReLU, warp per
    hidden layer, then the head."""
    del full_precision
    h = x
    for i in range(len(phi) // 2):
        h = F.relu(F.linear(h, theta[2 * i], theta[2 * i + 1]))
        h = F.linear(h, phi[2 * i], phi[2 * i + 1])
    return F.linear(h, theta[-2], theta[-1])


def figure(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Per protocol: its ``experiment``, ``reps`` and ``overrides``; each method's
    ``seconds`` per meta-iteration (median of ``reps``), ``min_seconds`` and
    ``peak_rss_mb``; ``overhead`` per warp method (its ``bare_seconds`` and ``ratio``); for
    ``fewshot`` the ``ratio`` of Warp-MAML over MAML; on a CPU, for the protocols whose
    seconds are targets (``scaled-multishot``), ``operators`` per method: the time inside
    PyTorch's operators, timed in place (:func:`case_protocol_operators`), the floor under
    its seconds with these kernels."""
    del meta
    out: dict[str, Any] = {}
    for name, protocol in PROTOCOLS.items():
        reps = protocol.reps if scale.name == "full" else 1
        entry: dict[str, Any] = {"experiment": protocol.experiment, "reps": reps,
                                 "overrides": _overrides(scale, protocol, ()), "methods": {},
                                 "overhead": {}}
        for label, method, _ in protocol.methods:
            log(f"protocol {name}: {label} ...")
            timed = common.run_case("protocol", scale, name, label, reps)
            entry["methods"][label] = timed
            log(f"  {timed['seconds']:.3f} s")
            if method.startswith("warp-"):
                bare = common.run_case("protocol_bare", scale, name, label, reps)["seconds"]
                ratio = timed["seconds"] / bare
                entry["overhead"][label] = {"bare_seconds": bare, "ratio": ratio}
                log(f"  bare compute {bare:.3f} s, ratio {ratio:.3f}")
            if name in _SECONDS_TARGETS and not scale.device.startswith("cuda"):
                inside = common.run_case("protocol_operators", scale, name, label)
                entry.setdefault("operators", {})[label] = inside
                log(f"  inside the operators {inside['seconds']:.3f} s")
        out[name] = entry
    few = out["fewshot"]["methods"]
    out["fewshot"]["ratio"] = few["warp-maml"]["seconds"] / few["maml"]["seconds"]
    return out
