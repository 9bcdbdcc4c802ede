"""Warp layers: the meta-learned layers interleaved with a learner's task layers.

A warp layer ω(·; φ) sits between task layers. During adaptation φ is frozen, yet every
task-parameter gradient flows back through ω, so ω's Jacobian preconditions it. The kinds
follow the paper's Omniglot ablation (``docs/paper.md``, "Warp layers"): a per-channel
scaling, a linear map (1x1 conv on feature maps), a 3x3 conv; each optionally followed by
batch norm and an activation, optionally residual, and stackable.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from warpgrad.models.batch_norm import BatchNorm1d, BatchNorm2d

WarpKind = Literal["scale", "linear", "conv3x3"]


class Scale(nn.Module):
    """Per-channel affine scaling ``y = s * x + b`` over dimension 1 of ``[B, C, ...]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class WarpLayer(nn.Module):
    """One warp layer: ``[residual +] act(bn(map(x)))``, shape-preserving.

    Args:
        channels: feature width C of the input ``[B, C]`` (``spatial=False``) or
            ``[B, C, H, W]`` (``spatial=True``); the output has the same shape.
        kind: ``"scale"`` (per-channel scale and shift), ``"linear"`` (a dense map over
            channels: ``nn.Linear`` on vectors, 1x1 conv on feature maps) or ``"conv3x3"``
            (3x3 conv, padding 1; feature maps only).
        batch_norm: batch norm after the map, with per-batch statistics (no running stats:
            the warp must not carry state across tasks).
        activation: ``None``, ``"relu"``, ``"leaky_relu"`` or ``"tanh"``.
        residual: add the input back: ``y = x + f(x)``.
        init: ``"identity"`` starts a non-residual map at the identity (so meta-training
            starts from plain SGD); ``"default"`` keeps PyTorch's initialisation. Residual
            branches always use PyTorch's initialisation.
    """

    def __init__(
        self,
        channels: int,
        kind: WarpKind = "conv3x3",
        *,
        spatial: bool = True,
        batch_norm: bool = False,
        activation: str | None = None,
        residual: bool = False,
        init: Literal["identity", "default"] = "identity",
    ) -> None:
        super().__init__()
        if kind == "scale":
            self.map: nn.Module = Scale(channels)
        elif kind == "linear":
            self.map = (nn.Conv2d(channels, channels, 1) if spatial
                        else nn.Linear(channels, channels))
        elif kind == "conv3x3":
            if not spatial:
                raise ValueError("a conv3x3 warp needs feature maps; use kind='linear' on vectors")
            self.map = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            raise ValueError(f"unknown warp kind {kind!r}; expected 'scale', 'linear' or 'conv3x3'")
        if init not in ("identity", "default"):
            raise ValueError(f"init must be 'identity' or 'default', got {init!r}")
        if init == "identity" and not residual and kind != "scale":
            _identity_(self.map)
        norm_cls = BatchNorm2d if spatial else BatchNorm1d
        self.norm = norm_cls(channels, track_running_stats=False) if batch_norm else nn.Identity()
        self.act = _activation(activation)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm(self.map(x)))
        return x + y if self.residual else y


def warp_stack(channels: int, depth: int = 1, **kwargs) -> nn.Module:
    """``depth`` warp layers in sequence (the paper's best Omniglot warp is two 3x3 conv + BN
    residual layers). ``kwargs`` go to every :class:`WarpLayer`."""
    if depth < 1:
        raise ValueError(f"warp depth must be at least 1, got {depth}")
    if depth == 1:
        return WarpLayer(channels, **kwargs)
    return nn.Sequential(*(WarpLayer(channels, **kwargs) for _ in range(depth)))


def identity_init_(module: nn.Module) -> nn.Module:
    """Start every ``nn.Linear`` and ``nn.Conv2d`` inside ``module`` at the identity map
    (weight = identity, bias = 0), in place; returns ``module``.

    For your own warps (``WarpedModel(net, warps=[...])`` with plain layers, which PyTorch
    initialises at random): a random warp distorts every gradient from the first
    meta-iteration, an identity warp starts meta-training from plain SGD (what
    :class:`WarpLayer` does by default). Each layer must map its width to itself
    (``in_features == out_features``; a conv with ``in_channels == out_channels``, odd
    kernel and "same" padding); raises ``ValueError`` naming the first layer that does not.
    """
    found = False
    for name, layer in module.named_modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        found = True
        if isinstance(layer, nn.Linear):
            square = layer.in_features == layer.out_features
        else:
            k = layer.kernel_size
            square = (layer.in_channels == layer.out_channels and layer.groups == 1
                      and all(s == 1 for s in layer.stride) and all(n % 2 for n in k)
                      and layer.padding in ("same", tuple(n // 2 for n in k)))
        if not square:
            raise ValueError(f"identity_init_: layer {name or type(layer).__name__!r} "
                             f"({layer}) does not map its input's shape to itself")
        _identity_(layer)
    if not found:
        raise ValueError(f"identity_init_: {type(module).__name__} has no nn.Linear or "
                         "nn.Conv2d to initialise")
    return module


def _identity_(layer: nn.Module) -> None:
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d):
            nn.init.dirac_(layer.weight)
        else:
            nn.init.eye_(layer.weight)
        if layer.bias is not None:
            layer.bias.zero_()


def _activation(name: str | None) -> nn.Module:
    table = {None: nn.Identity, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {list(table)}")
    return table[name]()
