"""The learners of the paper, built as :class:`WarpedModel` s.

- :func:`conv4`: four conv blocks with a warp layer after each (Omniglot: 64 filters, 28x28;
  mini/tieredImageNet: 128 filters, 84x84); the classifier head is not warped.
- :func:`mlp`: a ReLU MLP with a warp after each hidden layer (sine regression).
- :func:`warped_lstm`: an LSTM whose recurrence runs through a warp layer.
- :func:`adaptive_lstm`: an adaptive LSTM in the style of a hypernetwork, whose small
  projection and adaptation layers (the warp) modulate the gates' pre-activations (the
  paper's maze agent).

Batch-norm policy. By default task-layer batch norm uses per-batch statistics
(``track_running_stats=False``): each task is normalised by its own data during adaptation
and evaluation (transductive, as MAML does). ``batch_norm="running"`` keeps running
statistics instead; the engine gives each task fresh copies, updated during that task's
adaptation and used when it is evaluated, so statistics never leak between tasks.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import Tensor, nn

from warpgrad.models.batch_norm import BatchNorm2d
from warpgrad.models.warp_layers import WarpKind, warp_stack
from warpgrad.models.warped import WarpedModel


def conv4(
    num_classes: int,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    filters: int = 64,
    warp: WarpKind | None = "conv3x3",
    warp_depth: int = 1,
    warp_batch_norm: bool = False,
    warp_activation: str | None = None,
    warp_residual: bool = False,
    warp_blocks: tuple[int, ...] = (1, 2, 3, 4),
    batch_norm: Literal["batch", "running"] = "batch",
) -> WarpedModel:
    """Conv4 learner: 4 x [3x3 conv (pad 1) → 2x2 max-pool → BN → ReLU → warp], then a linear
    head. Spatial size 28→14→7→3→1 or 84→42→21→10→5.

    Args:
        num_classes: outputs of the linear head (N of an N-way task).
        in_channels, image_size: input ``[B, in_channels, image_size, image_size]``.
        filters: conv width (64 for Omniglot, 128 for mini/tieredImageNet in the paper).
        warp: warp kind after each block, or ``None`` for a plain (unwarped) Conv4.
        warp_depth, warp_batch_norm, warp_activation, warp_residual: see
            :class:`~warpgrad.models.warp_layers.WarpLayer`.
        warp_blocks: which blocks (1-4) get a warp layer.
        batch_norm: ``"batch"`` (per-batch statistics, the default) or ``"running"``
            (per-task running statistics used at evaluation), see the module docstring.

    Returns:
        A :class:`WarpedModel` mapping ``[B, C, H, W]`` images to ``[B, num_classes]`` logits.
    """
    if batch_norm not in ("batch", "running"):
        raise ValueError(f"batch_norm must be 'batch' or 'running', got {batch_norm!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    warps = []
    size, channels = image_size, in_channels
    for i in range(1, 5):
        layers[f"block{i}"] = nn.Sequential(
            nn.Conv2d(channels, filters, 3, padding=1),
            nn.MaxPool2d(2),
            BatchNorm2d(filters, track_running_stats=batch_norm == "running"),
            nn.ReLU(),
        )
        size, channels = size // 2, filters
        if warp is not None and i in warp_blocks:
            layers[f"warp{i}"] = warp_stack(
                filters, depth=warp_depth, kind=warp, batch_norm=warp_batch_norm,
                activation=warp_activation, residual=warp_residual,
            )
            warps.append(f"warp{i}")
    if size < 1:
        raise ValueError(f"image_size {image_size} is too small for four 2x2 poolings")
    layers["flatten"] = nn.Flatten()
    layers["head"] = nn.Linear(filters * size * size, num_classes)
    return WarpedModel(nn.Sequential(layers), warps)


def mlp(
    in_features: int = 1,
    out_features: int = 1,
    *,
    hidden: tuple[int, ...] = (40, 40),
    warp: WarpKind | None = "linear",
    warp_depth: int = 1,
    warp_activation: str | None = None,
    warp_residual: bool = False,
) -> WarpedModel:
    """MLP learner: [linear → ReLU → warp] per hidden layer, then a linear head.

    The default ``(40, 40)`` with linear warps is the sine-regression learner.
    Maps ``[B, in_features]`` to ``[B, out_features]``.
    """
    if warp == "conv3x3":
        raise ValueError("an MLP has no feature maps; use warp='linear' or 'scale'")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    warps = []
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers[f"layer{i}"] = nn.Sequential(nn.Linear(width, h), nn.ReLU())
        if warp is not None:
            layers[f"warp{i}"] = warp_stack(
                h, depth=warp_depth, kind=warp, spatial=False, activation=warp_activation,
                residual=warp_residual,
            )
            warps.append(f"warp{i}")
        width = h
    layers["head"] = nn.Linear(width, out_features)
    return WarpedModel(nn.Sequential(layers), warps)


def lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell update from the gates' pre-activations ``[B, 4H]`` (input, forget,
    candidate, output, in that order) and the cell ``c [B, H]``; returns the new ``(h, c)``."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def initial_state(x: Tensor, state: tuple[Tensor, Tensor] | None, hidden_size: int
                  ) -> tuple[Tensor, Tensor]:
    """``state`` or, when it is ``None`` (the start of a sequence), zeros ``(h, c)`` each
    ``[B, hidden_size]`` for the batch of ``x [T, B, ...]``."""
    if state is not None:
        return state
    zeros = x.new_zeros(x.shape[1], hidden_size)
    return zeros, zeros


class WarpedLSTM(nn.Module):
    """An LSTM whose recurrent input ``h_{t-1}`` passes through a warp layer.

    gates_t = W_x x_t + W_h ω(h_{t-1}) + b, with ω a warp (φ) and W_x, W_h, b and the output
    head task parameters (θ). Forward takes ``x [T, B, input_size]`` and an optional state
    ``(h, c)`` each ``[B, hidden_size]``, and returns ``(y [T, B, output_size], (h, c))``.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 warp: WarpKind | None = "linear", warp_depth: int = 1,
                 warp_activation: str | None = None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_map = nn.Linear(input_size, 4 * hidden_size)
        self.recurrent_map = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.warp = (
            nn.Identity() if warp is None else warp_stack(
                hidden_size, depth=warp_depth, kind=warp, spatial=False,
                activation=warp_activation)
        )
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = initial_state(x, state, self.hidden_size)
        projected = self.input_map(x)  # all time steps at once: [T, B, 4H]
        outputs = []
        for t in range(x.shape[0]):
            h, c = lstm_update(projected[t] + self.recurrent_map(self.warp(h)), c)
            outputs.append(h)
        return self.head(torch.stack(outputs)), (h, c)


def warped_lstm(input_size: int, output_size: int, *, hidden_size: int = 100,
                warp: WarpKind | None = "linear", warp_depth: int = 1,
                warp_activation: str | None = None) -> WarpedModel:
    """The recurrent learner for RL (hidden 100 in the maze experiment), see
    :class:`WarpedLSTM`; the warp on the recurrence is φ, everything else θ."""
    net = WarpedLSTM(input_size, hidden_size, output_size, warp, warp_depth, warp_activation)
    return WarpedModel(net, [] if warp is None else ["warp"])


class AdaptiveLSTM(nn.Module):
    """An adaptive LSTM in the style of a hypernetwork (HyperLSTM, Ha et al. 2016): a small
    network of the step's input and previous hidden state rescales, unit by unit, the
    gates' pre-activations.

    z_t = tanh(P_x x_t + P_h h_{t-1} + p) (``projection``, width ``adapt_size``),
    [d_x, d_h] = 1 + A z_t + a (``adaptation``, each ``[B, 4H]``),
    gates_t = d_h ⊙ (W_h h_{t-1}) + d_x ⊙ (W_x x_t) + b, then the usual LSTM update.

    ``projection`` and ``adaptation`` are the warp (φ); W_x, b (``input_map``), W_h
    (``recurrent_map``) and the output ``head`` are the task parameters (θ), named as in a
    plain :class:`WarpedLSTM`, so a θ of one loads into the other. The adaptation layer
    starts at zero, so every modulation starts at exactly 1 and the cell at initialisation
    computes the plain LSTM of its θ. Forward takes ``x [T, B, input_size]`` and an optional
    state ``(h, c)`` each ``[B, hidden_size]``, and returns ``(y [T, B, output_size], (h, c))``.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int,
                 adapt_size: int = 32) -> None:
        super().__init__()
        if adapt_size < 1:
            raise ValueError(f"adapt_size must be at least 1, got {adapt_size}")
        self.hidden_size = hidden_size
        # θ first, in the plain LSTM's order: under one seed both draw the same θ
        self.input_map = nn.Linear(input_size, 4 * hidden_size)
        self.recurrent_map = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.head = nn.Linear(hidden_size, output_size)
        self.projection = nn.ModuleDict({
            "input": nn.Linear(input_size, adapt_size),
            "hidden": nn.Linear(hidden_size, adapt_size, bias=False),
        })
        self.adaptation = nn.Linear(adapt_size, 8 * hidden_size)
        nn.init.zeros_(self.adaptation.weight)
        nn.init.zeros_(self.adaptation.bias)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = initial_state(x, state, self.hidden_size)
        # the input's parts of the gates and of the projection, all time steps at once
        # (the bias is left out of d_x's reach: it is added unmodulated)
        input_gates = nn.functional.linear(x, self.input_map.weight)  # [T, B, 4H]
        input_projection = self.projection["input"](x)  # [T, B, adapt_size]
        outputs = []
        for t in range(x.shape[0]):
            z = torch.tanh(input_projection[t] + self.projection["hidden"](h))
            d_x, d_h = (1 + self.adaptation(z)).chunk(2, dim=-1)
            gates = d_h * self.recurrent_map(h) + d_x * input_gates[t] + self.input_map.bias
            h, c = lstm_update(gates, c)
            outputs.append(h)
        return self.head(torch.stack(outputs)), (h, c)


def adaptive_lstm(input_size: int, output_size: int, *, hidden_size: int = 100,
                  adapt_size: int = 32) -> WarpedModel:
    """The paper's warped recurrent learner for RL (hidden 100 in the maze experiment), see
    :class:`AdaptiveLSTM`: the projection and adaptation layers are φ, everything else θ."""
    net = AdaptiveLSTM(input_size, hidden_size, output_size, adapt_size)
    return WarpedModel(net, ["projection", "adaptation"])
