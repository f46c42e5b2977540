"""magsrl's Hermes tool-call protocol: ``<tool_call>{"name": "zoom", "arguments":
{"bbox_2d": [...], "img_idx": k}}</tool_call>``, answered by one tool message per call (by
id), the crops in those tool messages or in one user message after them (``crop_in:
user``). Boxes in the served family's convention, on image ``img_idx``."""

from __future__ import annotations

from typing import Any

from magsrl.proto.prompts import render_prompt
from magsrl.proto.tools import ZOOM_TOOL_NAME, zoom_tool
from magsrl.zoom.protocols.base import Feedback, Message, ZoomProtocol
from magsrl.zoom.protocols.magsrl_tags import user_text
from magsrl.zoom.tags import parse_turn


def feedback(fb: Feedback) -> list[Message]:
    """The assistant turn as the text the model sampled, not rebuilt from the parsed calls
    (re-serialised arguments, a different joiner): the next round must be sampled after the
    history the model produced, and the learner trains on that same history. Each call
    still gets its own tool message, answering it by id (the template renders tool
    messages without looking at the ids)."""
    ids = [f"call_{fb.round_index}_{k}" for k in range(len(fb.calls))]
    out: list[Message] = [{"role": "assistant", "content": fb.text}]
    images: list[dict[str, Any]] = []
    for call_id, region in zip(ids, fb.regions, strict=True):
        if fb.crop_in == "user":
            images.extend(region)
            region = [p for p in region if p["type"] == "text"]
        out.append({"role": "tool", "tool_call_id": call_id, "content": region})
    tail = {"type": "text", "text": fb.tail}
    if fb.crop_in == "user":
        out.append({"role": "user", "content": [*images, tail]})
    else:
        out[-1]["content"] = [*out[-1]["content"], tail]
    return out


PROTOCOL = ZoomProtocol(
    name="magsrl_tools",
    aliases=("tools",),
    title="magsrl Hermes tool calls",
    source="this repository: proto/tools.py, proto/prompts/system_tools.md",
    call_format='<tool_call>{"name": "zoom", "arguments": {"bbox_2d": [x1, y1, x2, y2], '
    '"img_idx": 0, "label": "…"}}</tool_call>',
    coordinates="family",
    frame="the served family's, on image img_idx",
    crop_in="served",
    crop_wrapper="one tool message per call, answering its id",
    observations="img_idx: 0 the original, k the k-th crop",
    answer_format="<answer>…</answer>",
    max_rounds=2,
    tool_name=ZOOM_TOOL_NAME,
    tools=lambda: [zoom_tool()],
    chat_tool=zoom_tool,
    native=True,
    system_prompt=lambda hint: render_prompt("system_tools", coordinate_hint=hint),
    parse=lambda text: parse_turn(text).zooms,
    feedback=feedback,
    user_text=user_text,
)
