"""Batch norm that keeps float32 accuracy on channels-last CPU tensors.

PyTorch's CPU batch-norm kernel for channels-last (NHWC) input gathers its statistics in a
way that loses precision when a channel's mean is large against its spread, which conv
outputs of mostly-blank images are: on the Conv4/glyph protocol it put a 27% relative error
into the WarpGrad meta-gradient, against 1e-6 for NCHW (BENCHMARKS.md). This layer runs the
normalisation on an NCHW copy and hands back channels-last, so the channels-last switch buys
its speed from the convolutions and pooling only, never from accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _is_nhwc(x: Tensor) -> bool:
    return (x.dim() == 4 and x.device.type == "cpu" and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys) that normalises
    channels-last CPU input in the NCHW layout and returns it channels-last."""

    def forward(self, x: Tensor) -> Tensor:
        if _is_nhwc(x):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)
