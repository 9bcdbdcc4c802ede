"""Warp layers and warped models: the θ/φ split and the functional forward f(x; θ, φ)."""

from warpgrad.models.backbones import (
    AdaptiveLSTM,
    WarpedLSTM,
    adaptive_lstm,
    conv4,
    mlp,
    warped_lstm,
)
from warpgrad.models.warp_layers import Scale, WarpLayer, identity_init_, warp_stack
from warpgrad.models.warped import ParamSpec, WarpedModel

__all__ = ["AdaptiveLSTM", "ParamSpec", "Scale", "WarpLayer", "WarpedLSTM", "WarpedModel",
           "adaptive_lstm", "conv4", "identity_init_", "mlp", "warp_stack", "warped_lstm"]
