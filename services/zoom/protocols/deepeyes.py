"""DeepEyes (Visual-Agent/DeepEyes): Hermes-style ``<tool_call>`` to ``image_zoom_in_tool``
with ``bbox_2d`` in pixels of the image as Qwen2.5-VL's processor resized it, the crop sent
back in a *user* turn between ``<tool_response>`` and ``</tool_response>`` text parts, up to
5 turns (its training scripts' ``agent.max_turns=4`` tool turns and the answer), the answer
in ``<answer>``.

Read from ``eval/eval_vstar.py`` (commit cc3ff4d): ``instruction_prompt_system`` (the tool
schema written into the system prompt, not sent as ``tools``; its ``"required": ["bbox"]``
is the peer's own slip and kept verbatim), ``USER_PROMPT_V2``, ``instruction_prompt_before``
and the reply layout ``[<tool_response>, crop, USER_PROMPT_V2, </tool_response>]``. Its
``smart_resize`` bounds are MIN_PIXELS = 4*28*28 and MAX_PIXELS = 16384*28*28 = 12,845,056.
The eval crops ``pil_img`` at the raw numbers, i.e. it takes the resized frame to be the
original's; the two agree exactly for sides that are multiples of 28 and within 14 px
otherwise, and magsrl scales from the resized frame, which is what the model saw.

DeepEyes' schema has no image index: every zoom is of the original. magsrl also reads
its own ``img_idx`` argument there (an extension, off the peer's schema) so a DeepEyes-format
call can zoom into an earlier crop; the box is then in that crop's resized frame.
"""

from __future__ import annotations

from magsrl.common.coords import Convention
from magsrl.proto.prompts import OPTION_LETTERS
from magsrl.zoom.protocols.base import (
    Feedback,
    Message,
    ZoomProtocol,
    answer_issues,
    prompt_tool,
)
from magsrl.zoom.zoom_requests import parse_zoom_calls

TOOL_NAME = "image_zoom_in_tool"
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28  # 12,845,056

# eval/eval_vstar.py: instruction_prompt_system, verbatim.
SYSTEM_PROMPT = """You are a helpful assistant.

# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type":"function","function":{"name":"image_zoom_in_tool","description":"Zoom in on a specific region of an image by cropping it based on a bounding box (bbox) and an optional object label.","parameters":{"type":"object","properties":{"bbox_2d":{"type":"array","items":{"type":"number"},"minItems":4,"maxItems":4,"description":"The bounding box of the region to zoom in, as [x1, y1, x2, y2], where (x1, y1) is the top-left corner and (x2, y2) is the bottom-right corner."},"label":{"type":"string","description":"The name or label of the object in the specified bounding box (optional)."}},"required":["bbox"]}}}
</tools>

# How to call a tool
Return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>

**Example**:  
<tool_call>  
{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 100, 200], "label": "the apple on the desk"}}  
</tool_call>"""  # noqa: E501, W291  (the peer's long line and trailing spaces, kept)

# eval/eval_vstar.py: USER_PROMPT_V2, the suffix of the question and of every tool response.
USER_PROMPT = (
    "\nThink first, call **image_zoom_in_tool** if needed, then answer. Format strictly as:  "
    "<think>...</think>  <tool_call>...</tool_call> (if tools needed)  <answer>...</answer> "
)


def user_text(question: str, options: list[str] | None) -> str:
    """``instruction_prompt_before`` with options ("Question: …\\nOptions: \\nA. …\\n"), the
    question and USER_PROMPT_V2 without."""
    if not options:
        return question + USER_PROMPT
    listed = "\n" + "".join(f"{OPTION_LETTERS[i]}. {o}\n" for i, o in enumerate(options))
    return f"Question: {question}\nOptions: {listed}\n" + USER_PROMPT


def feedback(fb: Feedback) -> list[Message]:
    """The assistant turn verbatim, then one user turn: ``<tool_response>``, the crops,
    USER_PROMPT_V2, ``</tool_response>`` (errors go where a crop would)."""
    parts: list[Message] = [{"type": "text", "text": "<tool_response>"}]
    for zoom, image in zip(fb.zooms, fb.images, strict=True):
        if image is not None:
            parts.append({"type": "image", "image": image})
        else:
            parts.append({"type": "text", "text": f"Error: {zoom.error}"})
    parts += [{"type": "text", "text": USER_PROMPT}, {"type": "text", "text": "</tool_response>"}]
    return [{"role": "assistant", "content": fb.text}, {"role": "user", "content": parts}]


PROTOCOL = ZoomProtocol(
    name="deepeyes",
    title="DeepEyes",
    source="Visual-Agent/DeepEyes eval/eval_vstar.py (instruction_prompt_system, "
    "USER_PROMPT_V2, smart_resize bounds, the tool-response layout)",
    call_format='<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": '
    '[x1, y1, x2, y2], "label": "…"}}</tool_call>',
    tool_name=TOOL_NAME,
    # The schema of its system prompt, verbatim: a client serving DeepEyes declares it in
    # `tools` and gets the calls back as tool_calls (arguments as the model wrote them).
    chat_tool=lambda: prompt_tool(SYSTEM_PROMPT),
    coordinates="pixel",
    convention=Convention.QWEN2_5_VL,
    frame_pixels=(MIN_PIXELS, MAX_PIXELS),
    frame="pixels of the image as Qwen2.5-VL's processor resized it (smart_resize, "
    "factor 28, 3,136-12,845,056 px)",
    crop_in="user",
    crop_wrapper="<tool_response> crop USER_PROMPT_V2 </tool_response>, in a user turn",
    observations="none in the peer's schema (always the original); magsrl reads an "
    "optional img_idx as an extension",
    answer_format="<answer>…</answer>",
    max_rounds=5,
    system_prompt=lambda hint: SYSTEM_PROMPT,
    parse=lambda text: [c for c in parse_zoom_calls(text, TOOL_NAME) if c.source == "tool_call"],
    feedback=feedback,
    user_text=user_text,
    format_issues=answer_issues,
    auto_match=("deepeyes",),
)
