"""What the policy reports as its shared limits (``GET /v1/limits``). The openai engine's
start-up check of them against the upstream is ``magsrl.engines.upstream_limits``."""

from __future__ import annotations

from magsrl.policy.config import PolicySettings
from magsrl.proto.limits import EngineLimits
from magsrl.zoom.engine import Engine


def engine_limits(engine: Engine, settings: PolicySettings) -> EngineLimits:
    """The limits in force: the processor's own bounds where the engine holds one (hf),
    otherwise the settings or the family's defaults (what the openai engine converts boxes
    with, and what vLLM was started with)."""
    processor = getattr(engine, "processor", None)
    if processor is not None and hasattr(processor, "pixel_bounds"):
        low, high = processor.pixel_bounds()
    else:
        family = engine.family
        low = settings.min_image_pixels or family.default_min_pixels
        high = settings.max_image_pixels_model or family.default_max_pixels
    context = getattr(engine, "max_context", None) or settings.max_context
    return EngineLimits(
        min_image_pixels=low,
        max_image_pixels_model=high,
        max_images=settings.max_images,
        max_context=context,
    )
