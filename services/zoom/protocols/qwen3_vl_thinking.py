"""Qwen3-VL Thinking with Qwen-Agent's zoom tool (QwenLM/Qwen-Agent
``qwen_agent/tools/image_zoom_in_qwen3vl.py``, the tool of Qwen3-VL's "think with images"
cookbook): Hermes ``<tool_call>`` to ``image_zoom_in_tool`` with ``bbox_2d`` in 0-1000 of
the image ``img_idx`` (0 the first image of the conversation, each crop the next), a
``label``; the schema goes to the chat template as ``tools`` (no system prompt of its own),
each crop comes back as a tool response. The Thinking template opens ``<think>`` in the
generation prompt, so a turn is "reasoning</think>\\n\\nreply"; the answer is the reply.

The peer's tool enlarges boxes under 32 px and resizes crops with ``smart_resize`` (factor
32, at least 256*32*32 px); magsrl applies its own minimum side and magnifier instead. It
requires ``label`` and ``img_idx``; magsrl reads them as optional. Qwen-Agent bounds a run
by its LLM-call limit, not a zoom limit: the default of 8 turns here is magsrl's choice.
"""

from __future__ import annotations

from typing import Any

from magsrl.common.coords import Convention
from magsrl.proto.prompts import format_options
from magsrl.zoom.answers import extract_answer
from magsrl.zoom.protocols.base import Feedback, Message, ZoomProtocol, peer_arguments
from magsrl.zoom.zoom_requests import parse_zoom_calls, remove_tool_calls

TOOL_NAME = "image_zoom_in_tool"
MAX_ROUNDS = 8


def tool_schema() -> dict[str, Any]:
    """Qwen-Agent's ``ImageZoomInToolQwen3VL`` schema, as the template renders it."""
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Zoom in on a specific region of an image by cropping it based on "
            "a bounding box (bbox) and an optional object label",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": "The bounding box of the region to zoom in, as [x1, "
                        "y1, x2, y2], where (x1, y1) is the top-left corner and (x2, y2) is "
                        "the bottom-right corner",
                    },
                    "label": {
                        "type": "string",
                        "description": "The name or label of the object in the specified "
                        "bounding box",
                    },
                    "img_idx": {
                        "type": "number",
                        "description": "The index of the zoomed-in image (starting from 0)",
                    },
                },
                "required": ["bbox_2d", "label", "img_idx"],
            },
        },
    }


def answer(text: str) -> str:
    """The reply after the reasoning: the text after the last ``</think>``, without tool
    calls (an ``<answer>`` in it, if the prompt asked for one)."""
    reply = remove_tool_calls(text.rsplit("</think>", 1)[-1]).strip()
    return extract_answer(reply) if "<answer>" in reply else reply


def feedback(fb: Feedback) -> list[Message]:
    """The turn as sampled, then one tool message per call: its crop, or the error."""
    out: list[Message] = [{"role": "assistant", "content": fb.text}]
    images: list[Message] = []
    for k, (zoom, image) in enumerate(zip(fb.zooms, fb.images, strict=True)):
        part: Message = (
            {"type": "image", "image": image}
            if image is not None
            else {"type": "text", "text": f"Tool Execution Error {zoom.error}"}
        )
        if fb.crop_in == "user" and image is not None:
            images.append(part)
            part = {"type": "text", "text": f"image {fb.observations[k]}"}
        out.append(
            {"role": "tool", "tool_call_id": f"call_{fb.round_index}_{k}", "content": [part]}
        )
    if images:
        out.append({"role": "user", "content": images})
    return out


PROTOCOL = ZoomProtocol(
    name="qwen3_vl_thinking",
    title="Qwen3-VL Thinking (Qwen-Agent image_zoom_in_tool)",
    source="QwenLM/Qwen-Agent qwen_agent/tools/image_zoom_in_qwen3vl.py",
    call_format='reasoning</think> <tool_call>{"name": "image_zoom_in_tool", "arguments": '
    '{"bbox_2d": [x1, y1, x2, y2], "label": "…", "img_idx": 0}}</tool_call>',
    tool_name=TOOL_NAME,
    tools=lambda: [tool_schema()],
    chat_tool=tool_schema,
    tool_arguments=lambda call: {**peer_arguments(call), "img_idx": call.img_idx},
    coordinates="norm1000",
    convention=Convention.NORM1000,
    frame="0-1000 of the image img_idx",
    crop_in="served",
    crop_wrapper="a tool response per call (the template wraps it in <tool_response>)",
    observations="img_idx: 0 the original, k the k-th crop",
    answer_format="the reply after </think>",
    max_rounds=MAX_ROUNDS,
    system_prompt=lambda hint: "",
    parse=lambda text: [c for c in parse_zoom_calls(text, TOOL_NAME) if c.source == "tool_call"],
    feedback=feedback,
    user_text=lambda q, options: format_options(q, options) if options else q,
    answer=answer,
    format_issues=lambda text, final: (
        ["the last round has no reply after </think>"] if final and not answer(text) else []
    ),
    auto_match=("qwen3-vl*thinking",),
)
