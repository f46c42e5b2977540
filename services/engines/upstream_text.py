"""The exact text an upstream sampled, when its tool parser has taken the text apart.

vLLM's hermes parser (vllm/tool_parsers/hermes_tool_parser.py, ``extract_tool_calls``)
answers a turn with tool calls as ``content`` = only the text before the first
``<tool_call>`` plus parsed calls whose arguments are re-serialised; text between and after
calls, and the model's own spacing, are gone, and an unclosed call at the end of generation
is still a call. Training and the next round need what the model really wrote, so the text
is rebuilt from the choice's ``token_ids`` through the upstream's ``POST /detokenize``
(vllm/entrypoints/serve/tokenize/serving.py, ``create_detokenize``: a plain decode).

vLLM's own ``text`` leaves out the end-of-turn token that stopped generation (it is still in
``token_ids``), and ends before a stop string (``stop_reason`` that string); the rebuilt text
does the same. ``finish_reason`` cannot say whether the last token was the stop token: vLLM
reports ``tool_calls`` for a call cut by ``max_tokens`` too, so the decoded end-of-turn
marker is what is stripped. An upstream without
``/detokenize`` (another magsrl policy, which the rollout workers use) is read from the
log-prob tokens when they were asked for (each entry's UTF-8 ``bytes``, OpenAI's field, which
vLLM and magsrl fill: their concatenation is the sampled text byte for byte), and otherwise gets
the content and the calls joined back in Qwen's Hermes layout, as close as the parsed form
allows.
"""

from __future__ import annotations

import json
from typing import Any


def tool_call_text(name: str, arguments: str | dict[str, Any]) -> str:
    args = json.loads(arguments) if isinstance(arguments, str) and arguments else arguments
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args or {}})}\n</tool_call>"


def rebuilt_text(content: str | None, calls: list[tuple[str, str]]) -> str:
    """Content and calls in Qwen's Hermes layout: the best guess without token ids."""
    text = content or ""
    for k, (name, arguments) in enumerate(calls):
        text += ("\n" if k else "") + tool_call_text(name, arguments)
    return text


END_OF_TURN = ("<|im_end|>", "<|endoftext|>")  # Qwen's; generation stops on either


def sampled_text(decoded: str, stop_reason: Any) -> str:
    """The choice's text from the decode of all its ``token_ids``."""
    for marker in END_OF_TURN:
        if decoded.endswith(marker):
            return decoded[: -len(marker)]
    if isinstance(stop_reason, str) and stop_reason in decoded:
        return decoded[: decoded.index(stop_reason)]
    return decoded


def text_from_logprob_bytes(choice: dict[str, Any]) -> str | None:
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
    for eos in END_OF_TURN:
        if text.endswith(eos):
            text = text[: -len(eos)]
            break
    return text
