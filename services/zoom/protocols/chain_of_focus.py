"""Chain-of-Focus (xtong-zhang/Chain-of-Focus, ``eval/vstar/vllm_inference.py``): Hermes
``<tool_call>`` to ``image_zoom_in_tool`` (schema in the system prompt) with ``bbox_2d`` in
pixels of the image as the eval resized it (``smart_resize``, factor 28, 112² to 3840² px,
sent already resized); the eval enlarges the box 1.5x about its centre (clipped to the
image), crops, scales the crop up 2x, and sends it back in a user turn followed by the same
instruction as the question (USER_PROMPT); at most 6 model calls. Every crop is of the
original image (no observation references); only the turn's first call is read.

magsrl enlarges the box the same way (``ENLARGE``) and lets the loop clamp it to the image,
which is the eval's clipping; it rounds where the eval truncates (at most 1 px apart). The
eval falls back to the whole image for an invalid box; magsrl tells the model the error.
"""

from __future__ import annotations

from magsrl.common.coords import Convention
from magsrl.zoom.protocols.base import (
    Feedback,
    Message,
    ZoomProtocol,
    answer_issues,
    prompt_tool,
)
from magsrl.zoom.protocols.magsrl_tags import user_text as _listed
from magsrl.zoom.zoom_requests import ZoomCall, parse_zoom_calls

TOOL_NAME = "image_zoom_in_tool"
MIN_PIXELS = 112 * 112  # --min_resolution 112
MAX_PIXELS = 3840 * 3840
ENLARGE = 1.5  # --enlarge_factor
MAX_ROUNDS = 6  # max_iterations

# vllm_inference.py: SYSTEM_PROMPT, verbatim.
SYSTEM_PROMPT = """You are a helpful assistant.

# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name":"image_zoom_in_tool","description":"Zoom in on a specific region of an image by cropping it based on a bounding box (bbox_2d) and an optional object label.","parameters":{"properties":{"bbox_2d":{"type":"array","items":{"type":"number"},"minItems":4,"maxItems":4,"description":"The bounding box of the region to zoom in, as [x1, y1, x2, y2], where (x1, y1) is the top-left corner and (x2, y2) is the bottom-right corner."},"label":{"type":"string","description":"The name or label of the object in the specified bounding box (optional)."}},"required":["bbox_2d"], "type":"object"},"args_format": "Format the arguments as a JSON object."}}
</tools>

For the function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>"""  # noqa: E501  (the peer's long line, kept)

USER_PROMPT = (
    "\nThink in the mind first, and then decide whether to call tools one or more times OR "
    "provide final answer. Format strictly as: <think>...</think> <tool_call>...</tool_call> "
    "<tool_call>...</tool_call> (if any tools needed) OR <answer>...</answer> (if no tools "
    "needed)."
)


def enlarge(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``find_absolute_bboxes`` with enlarge_factor: the box grown about its centre (the
    loop then clips it to the image, as the eval does)."""
    x0, y0, x1, y1 = box
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * ENLARGE, (y1 - y0) * ENLARGE
    return cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2


def first_call(text: str) -> list[ZoomCall]:
    """The turn's first ``<tool_call>`` as written (``re.search`` in the eval), not enlarged:
    what the chat API returns, the enlargement being the caller's tool's business."""
    return [c for c in parse_zoom_calls(text, TOOL_NAME) if c.source == "tool_call"][:1]


def parse(text: str) -> list[ZoomCall]:
    """The turn's first ``image_zoom_in_tool`` call (the eval's ``re.search``), enlarged;
    always of the original image."""
    out = []
    for call in first_call(text):
        if call.error is None and call.box is not None:
            call = ZoomCall(
                enlarge(call.box), 0, call.label, call.source, None, call.raw, call.span
            )
        out.append(call)
    return out


def feedback(fb: Feedback) -> list[Message]:
    """The turn as sampled, then a user turn: the crop and USER_PROMPT again."""
    zoom, image = fb.zooms[0], fb.images[0]
    shown: Message = (
        {"type": "image", "image": image}
        if image is not None
        else {"type": "text", "text": f"Error: {zoom.error}"}
    )
    return [
        {"role": "assistant", "content": fb.text},
        {"role": "user", "content": [shown, {"type": "text", "text": USER_PROMPT}]},
    ]


PROTOCOL = ZoomProtocol(
    name="chain_of_focus",
    title="Chain-of-Focus",
    source="xtong-zhang/Chain-of-Focus (638b9ba) eval/vstar/vllm_inference.py (SYSTEM_PROMPT, "
    "USER_PROMPT, resize_image, find_absolute_bboxes, do_crop, max_iterations)",
    call_format='<think>…</think> <tool_call>{"name": "image_zoom_in_tool", "arguments": '
    '{"bbox_2d": [x1, y1, x2, y2], "label": "…"}}</tool_call>',
    tool_name=TOOL_NAME,
    chat_tool=lambda: prompt_tool(SYSTEM_PROMPT),
    chat_parse=first_call,
    coordinates="pixel",
    convention=Convention.QWEN2_5_VL,
    frame_pixels=(MIN_PIXELS, MAX_PIXELS),
    frame="pixels of the image as the eval resized it (smart_resize, factor 28, "
    "12,544-14,745,600 px); the box is enlarged 1.5x about its centre",
    crop_in="user",
    crop_wrapper="a user turn: the crop, then USER_PROMPT again",
    observations="none: every crop is of the original",
    answer_format="<answer>…</answer>",
    max_rounds=MAX_ROUNDS,
    system_prompt=lambda hint: SYSTEM_PROMPT,
    parse=parse,
    feedback=feedback,
    # The eval's V* questions carry their options in the text: "Question: {text}{USER_PROMPT}".
    user_text=lambda q, options: f"Question: {_listed(q, options)}{USER_PROMPT}",
    format_issues=answer_issues,
    auto_match=("chain-of-focus", "chain_of_focus"),
)
