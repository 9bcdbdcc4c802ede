"""Host-to-device copies that do not make the host wait."""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t.to(device)``, same values. A CPU tensor bound for a GPU is copied from pinned
    memory without blocking: a copy from ordinary (pageable) memory first waits for every
    kernel already queued, which, once per batch draw, keeps the host from running ahead of
    the device. Pinned blocks are not reused before their copy has completed (PyTorch's
    caching host allocator records the copy)."""
    device = torch.device(device)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
