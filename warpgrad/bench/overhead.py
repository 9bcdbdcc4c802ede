"""Figure 2, ``overhead``: the Warp-Leap meta-iteration's wall time over the time of the bare
compute it needs, the same forward and backward passes written as a hand-rolled loop over
plain tensors (no learner, engine, buffer or backend).

The bare network is the library's, layer for layer: on the reference core PyTorch's
functional layers in NCHW; on the accelerator the accelerated layers' own functions
(:mod:`warpgrad.accel.conv`, :mod:`~warpgrad.accel.pool`, :mod:`~warpgrad.accel.norm`),
channels-last where :mod:`warpgrad.accel.blocks` runs a block so, inside the scopes of
:mod:`warpgrad.accel.scopes` that the accelerated backend opens. A ratio near 1 says the
library adds little to the arithmetic it cannot avoid.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from warpgrad.bench import common
from warpgrad.bench.common import INNER_LR, N_WAY, SWITCHES, Scale, build_tasks, case, measure


def bare_params(filters: int, warped: bool, n_way: int = N_WAY
                ) -> tuple[list[Tensor], list[Tensor]]:
    """Conv4's parameters as plain tensors on the case's device: θ (per block conv weight
    ``[filters, C_in, 3, 3]``, bias, BN scale and shift ``[filters]``; the head ``[n_way,
    filters]`` and ``[n_way]``) and the warps' φ (identity-initialised 3x3 convs
    ``[filters, filters, 3, 3]`` and their biases)."""
    g = torch.Generator().manual_seed(0)
    theta: list[Tensor] = []
    warps: list[Tensor] = []
    channels = 1
    for _ in range(4):
        theta += [torch.randn(filters, channels, 3, 3, generator=g) * 0.1,
                  torch.zeros(filters), torch.ones(filters), torch.zeros(filters)]
        if warped:
            eye = torch.zeros(filters, filters, 3, 3)
            eye[torch.arange(filters), torch.arange(filters), 1, 1] = 1.0
            warps += [eye, torch.zeros(filters)]
        channels = filters
    theta += [torch.randn(n_way, filters, generator=g) * 0.1, torch.zeros(n_way)]
    device = SWITCHES["device"]
    return [t.to(device) for t in theta], [w.to(device) for w in warps]


def bare_forward(theta: list[Tensor], warps: list[Tensor], x: Tensor,
                 full_precision: bool = False) -> Tensor:
    """Conv4 on plain tensors: ``x [B, 1, 28, 28]`` to logits ``[B, 20]`` (float32), with
    the layers the case's model has (see the module docstring). ``full_precision``: float32
    even under bf16, as the accelerator runs WarpGrad's step at θ_k (its meta-backward's
    convolutions then run in bf16, :data:`~warpgrad.accel.scopes.META_BACKWARD_BF16`)."""
    if SWITCHES["reference"]:
        return _forward(theta, warps, x, _reference_block, F.conv2d)
    from warpgrad.accel.conv import conv2d
    from warpgrad.accel.scopes import META_BACKWARD_BF16

    bf16 = SWITCHES["precision"] == "bf16"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16 and not full_precision
                        ), META_BACKWARD_BF16 if bf16 and full_precision else nullcontext():
        return _forward(theta, warps, x, _accelerated_block, conv2d)


def _forward(theta: list[Tensor], warps: list[Tensor], x: Tensor,
             block: Callable[[Tensor, list[Tensor]], Tensor], conv: Callable[..., Tensor]
             ) -> Tensor:
    h = x
    for i in range(4):
        h = F.relu(block(h, theta[4 * i: 4 * i + 4]))
        if warps:
            h = conv(h, warps[2 * i], warps[2 * i + 1], padding=(1, 1))
    return F.linear(h.flatten(1), theta[16], theta[17]).float()


def _reference_block(h: Tensor, params: list[Tensor]) -> Tensor:
    """The reference core's block: conv, 2x2 max-pool, batch norm with batch statistics."""
    w, b, gamma, beta = params
    h = F.max_pool2d(F.conv2d(h, w, b, padding=(1, 1)), 2)
    return F.batch_norm(h, None, None, gamma, beta, training=True)


def _accelerated_block(h: Tensor, params: list[Tensor]) -> Tensor:
    """:class:`warpgrad.accel.blocks.ConvBlock` with the accelerated layers' functions."""
    from warpgrad.accel.blocks import channels_last_applies
    from warpgrad.accel.conv import conv2d
    from warpgrad.accel.norm import channels_last_batch_norm, is_nhwc
    from warpgrad.accel.pool import max_pool2d
    from warpgrad.accel.transforms import to_channels_last

    w, b, gamma, beta = params
    if channels_last_applies(h):
        h = to_channels_last(h)
    h = max_pool2d(conv2d(h, w, b, padding=(1, 1)), 2)
    return (channels_last_batch_norm(h, gamma, beta, 1e-5) if is_nhwc(h) else
            F.batch_norm(h, None, None, gamma, beta, training=True))


def bare_meta_iteration(tasks: int, steps: int, batch_size: int, filters: int,
                        variant: str, batch: tuple[Tensor, Tensor] | None = None) -> None:
    """The forward/backward passes one Warp-Leap meta-iteration needs, on plain tensors:
    per task ``steps`` SGD steps (forward+backward, update), then for each of the
    ``tasks * (steps + 1)`` buffer points the inner forward+backward (``create_graph`` for
    ``exact``, in the second-order scope on the accelerator), the step, the outer
    forward+backward into φ and φ's SGD update. Every pass uses the one ``batch`` (default:
    uniform noise of ``batch_size`` 28x28 images)."""
    theta0, warps = bare_params(filters, True)
    g = torch.Generator().manual_seed(0)
    if batch is None:
        batch = (torch.rand(batch_size, 1, 28, 28, generator=g),
                 torch.randint(N_WAY, (batch_size,), generator=g))
    x, y = (t.to(theta0[0].device) for t in batch)
    points = []
    for _ in range(tasks):
        theta = [t.clone() for t in theta0]
        points.append(theta)
        for _ in range(steps):
            theta = [t.detach().requires_grad_() for t in theta]
            loss = F.cross_entropy(bare_forward(theta, warps, x), y)
            grads = torch.autograd.grad(loss, theta)
            with torch.no_grad():
                theta = [t - INNER_LR * d for t, d in zip(theta, grads)]
            points.append(theta)
    phi = [w.clone().requires_grad_() for w in warps]
    exact = variant == "exact"
    for point in points:
        theta = [t.detach().requires_grad_() for t in point]
        with second_order() if exact else nullcontext():
            inner = F.cross_entropy(bare_forward(theta, phi if exact else warps, x, True), y)
            grads = torch.autograd.grad(inner, theta, create_graph=exact)
        stepped = [t - INNER_LR * d for t, d in zip(theta, grads)]
        outer = F.cross_entropy(bare_forward(stepped, phi, x), y)
        phi_grads = torch.autograd.grad(outer, phi)
        with torch.no_grad():
            for p, d in zip(phi, phi_grads):
                p.sub_(INNER_LR * d)


def second_order() -> Any:
    """The scope the accelerator opens for a pass whose gradient is differentiated again
    (nothing on the reference core)."""
    if SWITCHES["reference"]:
        return nullcontext()
    from warpgrad.accel.scopes import SECOND_ORDER

    return SECOND_ORDER


@case("bare")
def case_bare(scale: Scale, variant: str) -> dict[str, float]:
    """Figure 2's denominator: :func:`bare_meta_iteration` at the measured shapes."""
    # a real glyph batch: some kernels' speed depends on the data (e.g. NCHW max-pooling)
    batch = build_tasks(scale.batch_size, 1)[0].train_batch(torch.Generator().manual_seed(0))
    bare_meta_iteration(1, 1, scale.batch_size, scale.filters, variant, batch)  # warm-up
    return measure(lambda: bare_meta_iteration(scale.measured_tasks, scale.steps,
                                               scale.batch_size, scale.filters, variant, batch))


def figure(scale: Scale, log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Per variant the measured meta-iteration's seconds (``meta``, figure 1), the bare
    compute's and their ``ratio``, over ``tasks`` measured tasks."""
    overhead = {}
    for variant in ("exact", "first-order"):
        log(f"bare compute {variant} ...")
        bare = common.run_case("bare", scale, variant)
        measured = meta[f"warp-leap-{variant}"]["measured_seconds"]
        overhead[variant] = {"meta_iteration_seconds": measured,
                             "bare_seconds": bare["seconds"],
                             "ratio": measured / bare["seconds"],
                             "tasks": scale.measured_tasks}
        log(f"  ratio {overhead[variant]['ratio']:.3f}")
    return overhead
