"""magsrl's own tag protocol (Mags-RL): ``<think>`` with ``<zoom>[[x1,y1,x2,y2]]</zoom>``,
the crops back in a tool message (or a user message, ``crop_in: user``) each captioned with
its box, then ``<rethink>`` and ``<answer>``. Boxes are in the served model family's own
convention (Qwen2.5-VL: pixels of the resized image; Qwen3-VL: 0-1000)."""

from __future__ import annotations

from magsrl.proto.prompts import format_options, render_prompt
from magsrl.proto.tools import zoom_tool
from magsrl.zoom.protocols.base import Feedback, Message, ZoomProtocol
from magsrl.zoom.tags import parse_turn


def user_text(question: str, options: list[str] | None) -> str:
    return format_options(question, options) if options else question


def feedback(fb: Feedback) -> list[Message]:
    parts = [p for region in fb.regions for p in region]
    tail = {"type": "text", "text": fb.tail}
    role = "tool" if fb.crop_in == "tool" else "user"
    return [{"role": "assistant", "content": fb.text}, {"role": role, "content": [*parts, tail]}]


PROTOCOL = ZoomProtocol(
    name="magsrl_tags",
    aliases=("tags",),
    title="magsrl / Mags-RL tags",
    source="this repository: proto/prompts/system_tags.md; Mags-RL (2026)",
    call_format="<think>… <zoom>[[x1, y1, x2, y2]]</zoom></think>",
    coordinates="family",
    frame="the served family's: Qwen2.5-VL pixels of the processor-resized image, "
    "Qwen3-VL 0-1000; relative to the image the box is on",
    crop_in="served",
    crop_wrapper="'Region k [box]:' caption before each crop, zoom_feedback after",
    observations="one <zoom> per image; crops become images 1, 2, … (tools: img_idx)",
    answer_format="<answer>…</answer> (after <rethink>)",
    max_rounds=2,
    system_prompt=lambda hint: render_prompt("system_tags", coordinate_hint=hint),
    parse=lambda text: parse_turn(text).zooms,
    feedback=feedback,
    user_text=user_text,
    auto_match=(),
    chat_tool=zoom_tool,
    native=True,
)
