"""The start-up check of the limits an engine and magsrl share, against what an upstream
engine reports about itself.

Of the limits, vLLM reports only its context length (``max_model_len`` in each ``/v1/models``
card: vllm/entrypoints/openai/protocol.py, ``ModelCard``); its pixel budget and images per
prompt are command-line flags it does not expose, so compose.yaml passes the policy the
same variables it builds those flags from (docs/deploy.md).
"""

from __future__ import annotations

from typing import Any


def upstream_disagreement(
    cards: list[dict[str, Any]], served: str, max_context: int | None
) -> str | None:
    """Why the upstream's reported limits and the policy's settings cannot both hold, or
    None. A setting left unset, or a figure the upstream does not report, is not checked."""
    card = next((m for m in cards if m.get("id") == served), None)
    reported = card.get("max_model_len") if card else None
    if max_context is not None and isinstance(reported, int) and reported != max_context:
        return (
            f"the engine serves '{served}' with a context of {reported} tokens "
            f"(--max-model-len) but MAGSRL_MAX_CONTEXT is {max_context}; set both from one "
            "value (MAGSRL_ENGINE_MAX_MODEL_LEN in .env, see docs/deploy.md)"
        )
    return None
