"""The text a remote sampler really produced, read back from its per-token log-probs.

An OpenAI-compatible server that parses tool calls (vLLM's hermes parser, magsrl's own chat
API) hands back ``content`` (vLLM: only the text before the first ``<tool_call>``) and
structured ``tool_calls``. Rebuilding the turn from those re-serialises the arguments
(``[10,20,...]`` becomes ``[10.0, 20.0, ...]``) and loses the text between and after the
calls, so the next round would be sampled after a history the model never wrote. Each
log-prob entry carries the token's UTF-8 ``bytes`` (OpenAI's field; vLLM fills it), so their
concatenation is the sampled text, byte for byte.
"""

from __future__ import annotations

from typing import Any

# End-of-turn tokens a server may list as the last sampled token; the text excludes them.
EOS_TEXTS = ("<|im_end|>", "<|endoftext|>")


def sampled_text(choice: dict[str, Any]) -> str | None:
    """The completion's text from its log-prob tokens, or None when they are missing."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    data = bytearray()
    for entry in content:
        raw = entry.get("bytes")
        if raw is None:
            token = entry.get("token")
            if token is None:
                return None
            raw = token.encode()
        data.extend(raw)
    text = data.decode("utf-8", errors="replace")
    for eos in EOS_TEXTS:
        if text.endswith(eos):
            text = text[: -len(eos)]
            break
    return text
