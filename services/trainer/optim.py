"""The learning-rate schedule: linear warmup, then constant or cosine decay to a floor.

A pure function of the step, so a resumed run (which restores the step counter) continues
on the same curve with no scheduler state to save. The shapes are those of transformers'
``get_cosine_schedule_with_warmup`` (TRL's default ``lr_scheduler_type``) and verl's
``lr_warmup_steps`` / ``warmup_style: cosine`` with ``min_lr_ratio``."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine"]


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: Schedule = "constant",
    min_lr_ratio: float = 0.0,
) -> float:
    """The multiplier of the peak learning rate for 0-based optimizer step ``step``.

    Warmup rises linearly to 1 over ``warmup_steps``, starting at 1/warmup (not 0, which would
    waste the first step). Then ``constant`` stays at 1 and ``cosine`` falls from 1 at the end
    of warmup towards ``min_lr_ratio``, which it would reach one step after the last (as
    transformers' cosine schedule: the last step still moves the weights)."""
    if step < 0 or total_steps < 1:
        raise ValueError(f"step={step} must be >= 0 and total_steps={total_steps} >= 1")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}: constant or cosine")
