"""Device and dtype choice for the code that runs torch (magnifier, policy engine, learner).
Kept apart from ``magsrl.common`` so services without torch never import it."""

from __future__ import annotations

import torch


def pick_device(setting: str) -> torch.device:
    """``auto`` picks cuda when present; ``cuda`` and ``cpu`` are taken as given."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and fp32 on CPU (CPU bf16 matmuls are slow and inexact)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)
