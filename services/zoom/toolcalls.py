"""Zoom calls as OpenAI ``tool_calls`` entries, with deterministic ids, so the chat API
returns the same ids for the same output whether it streamed or not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from magsrl.proto.tools import ZOOM_TOOL_NAME
from magsrl.zoom.zoom_requests import ZoomCall

_ID_HEX_CHARS = 8  # OpenAI-style ids look like call_<hex>; 8 hex digits is ample per message


def tool_call_id(call: ZoomCall, index: int, prefix: str = "call_", seed: str = "") -> str:
    """A deterministic id from the seed, the call's index and the call itself (its span and
    box too, so the boxes of one tag differ even if a caller numbers every call 0)."""
    key = f"{seed}\x00{index}\x00{call.span}\x00{call.box}\x00{call.raw}"
    digest = hashlib.sha1(key.encode()).hexdigest()
    return prefix + digest[:_ID_HEX_CHARS]


def to_openai_tool_call(
    call: ZoomCall, index: int, id_prefix: str = "call_", seed: str = ""
) -> dict[str, object]:
    """One OpenAI ``tool_calls`` entry for a usable call (tag zooms become zoom calls too)."""
    if call.box is None or not call.usable:
        raise ValueError(f"only usable zoom calls become tool calls; this one: {call.error}")
    arguments: dict[str, object] = {"bbox_2d": [int(v) if v.is_integer() else v for v in call.box]}
    if call.label is not None:
        arguments["label"] = call.label
    arguments["img_idx"] = call.img_idx
    return {
        "id": tool_call_id(call, index, id_prefix, seed),
        "type": "function",
        "function": {"name": ZOOM_TOOL_NAME, "arguments": json.dumps(arguments)},
    }


def to_openai_tool_calls(
    calls: Sequence[ZoomCall], id_prefix: str = "call_", seed: str = ""
) -> list[dict[str, object]]:
    """OpenAI ``tool_calls`` for the usable calls. Ids use each call's position in ``calls``
    (unusable ones counted), so a stream that numbers every ZoomCall event the same way
    gives the same ids as the one-shot parse."""
    return [
        to_openai_tool_call(call, index, id_prefix, seed)
        for index, call in enumerate(calls)
        if call.usable
    ]
