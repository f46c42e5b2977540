"""The learning-rate schedule against its closed form (warmup, constant, cosine, floor)."""

from __future__ import annotations

import math

import pytest

from magsrl.trainer.optim import lr_factor


def reference(step: int, total: int, warmup: int, schedule: str, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize(("total", "warmup", "floor"), [(10, 0, 0.0), (10, 3, 0.1), (1, 0, 0.0)])
def test_lr_factor_matches_the_closed_form(
    schedule: str, total: int, warmup: int, floor: float
) -> None:
    """Pins a warmup that starts at 0 (a wasted step), a cosine that ends at the floor on the
    last step (also wasted), or a floor ignored."""
    got = [lr_factor(s, total, warmup, schedule, floor) for s in range(total)]  # type: ignore[arg-type]
    assert got == pytest.approx(
        [reference(s, total, warmup, schedule, floor) for s in range(total)]
    )
    assert min(got) > 0
    if schedule == "cosine" and total > warmup + 1:
        assert got[-1] < got[warmup] and got[-1] > floor


def test_lr_factor_refuses_nonsense() -> None:
    """Pins a negative step or an unknown schedule silently giving some learning rate."""
    with pytest.raises(ValueError):
        lr_factor(-1, 10)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(0, 10, schedule="linear")  # type: ignore[arg-type]
