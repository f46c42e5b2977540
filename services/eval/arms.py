"""The ablation's arms: names like ``zoom-sr`` or ``no-zoom`` and what each asks ``/answer``.

``zoom-<upscale>`` lets the model decide whether to zoom; ``force-<upscale>`` makes round 1
name a region (MGPO's grounding turn); ``no-zoom`` answers in one round from the full image.
The paper's open question is ``zoom-sr`` against ``zoom-crop``: super-resolution against
plain low-resolution crops, on the same samples.
"""

from __future__ import annotations

from magsrl.proto.eval import ArmSpec
from magsrl.proto.vocab import UPSCALE_METHODS

UPSCALES = UPSCALE_METHODS
DEFAULT_ARMS = "zoom-sr,zoom-bicubic,zoom-crop,no-zoom"


def known_arms() -> list[str]:
    return [f"{mode}-{up}" for mode in ("zoom", "force") for up in UPSCALES] + ["no-zoom"]


def parse_arm(name: str) -> ArmSpec:
    name = name.strip().lower()
    if name == "no-zoom":
        # upscale is moot with no zoom; sr keeps the request identical to the default.
        return ArmSpec(name=name, zoom="off", upscale="sr")
    mode, _, upscale = name.partition("-")
    if mode in ("zoom", "force") and upscale in UPSCALES:
        return ArmSpec(name=name, zoom="auto" if mode == "zoom" else "force", upscale=upscale)  # type: ignore[arg-type]
    raise ValueError(f"unknown arm {name!r}; expected one of {', '.join(known_arms())}")


def parse_arms(text: str) -> list[ArmSpec]:
    """Comma-separated arm names, in the order given (the report keeps it); no repeats."""
    names = [part for part in (p.strip() for p in text.split(",")) if part]
    if not names:
        raise ValueError(f"name at least one arm, e.g. --arms {DEFAULT_ARMS}")
    arms = [parse_arm(name) for name in names]
    seen: set[str] = set()
    for arm in arms:
        if arm.name in seen:
            raise ValueError(f"arm {arm.name!r} is named twice")
        seen.add(arm.name)
    return arms
