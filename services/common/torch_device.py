"""Device choice for the services that run torch (magnifier, policy, trainer). Kept out of
the rest of ``magsrl.common`` so services without torch never import it."""

from __future__ import annotations

import torch


def pick_device(setting: str) -> torch.device:
    """``auto`` picks cuda when present; ``cuda`` and ``cpu`` are taken as given."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
