"""What the policy reports as its shared limits (``GET /v1/limits``), and the start-up check
of its settings against what an upstream engine reports about itself.

Of the limits, vLLM reports only its context length (``max_model_len`` in each ``/v1/models``
card: vllm/entrypoints/openai/protocol.py, ``ModelCard``); its pixel budget and images per
prompt are command-line flags it does not expose, so compose.yaml passes the policy the
same variables it builds those flags from (docs/deploy.md).
"""

from __future__ import annotations

from typing import Any

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


def upstream_disagreement(
    models_body: dict[str, Any], served: str, settings: PolicySettings
) -> str | None:
    """Why the upstream's reported limits and the policy's settings cannot both hold, or
    None. A setting left unset, or a figure the upstream does not report, is not checked."""
    card = next((m for m in models_body.get("data", []) if m.get("id") == served), None)
    reported = card.get("max_model_len") if card else None
    limit = settings.max_context
    if limit is not None and isinstance(reported, int) and reported != limit:
        return (
            f"the engine serves '{served}' with a context of {reported} tokens "
            f"(--max-model-len) but MAGSRL_MAX_CONTEXT is {limit}; set both from one "
            "value (MAGSRL_ENGINE_MAX_MODEL_LEN in .env, see docs/deploy.md)"
        )
    return None
