"""MGPO (EvolvingLMMs-Lab/MGPO; code on xinyu1205/verl, branch mgpo): in turn 1 the model
appends a JSON code block ```` ```json\\n[{"bbox_2d": [x1, y1, x2, y2], "label": "…"}]\\n``` ````
in pixels of the image as resized for it (Qwen2.5-VL, 200,704-1,003,520 px); the rollout cuts
the turn after that block, crops the original, and sends the sub-image in a user turn with
the question again; turn 2 answers in ``\\boxed{}``. Two turns in all.

Read from ``examples/grpo_trainer/run_qwen2_5_vl-7b_mgpo.sh`` (system prompt, post prompt,
``sub_image_token_prompt``, ``ori_image_token_prompt``, min/max pixels) and
``verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py`` (``truncate_at_json_bbox``: the
first block that is a list of dicts with four-int ``bbox_2d`` and a string ``label``;
``crop_image``: ``int(x / resize_w * ori_w)``). How the dataset joins the post prompt and
formats ``{choices}`` is not public; magsrl writes "question\\npost prompt" and "A. …" lines.
Where the peer sends the original image back after unusable coordinates, magsrl does too.
"""

from __future__ import annotations

import json
import re

from magsrl.common.coords import BoxError, Convention, check_box
from magsrl.proto.prompts import OPTION_LETTERS
from magsrl.zoom.protocols.base import Feedback, Message, ZoomProtocol
from magsrl.zoom.zoom_requests import ZoomCall

MIN_PIXELS = 200_704
MAX_PIXELS = 1_003_520

SYSTEM_PROMPT = (
    "You are a helpful assistant. Given an image and one question. First, identify the "
    "coordinates of the key image area relevant to solving the problem. Append the "
    "coordinates in JSON format at the end of your response and stop. This will trigger "
    "cropping of the corresponding area in the original image and enlarge it for improved "
    "clarity. Once the enlarged image is available, provide the final answer (A, B, C, D, or "
    "E) enclosed within \\boxed{}."
)
POST_PROMPT = "Out the coordinates of the key image area relevant to the problem in JSON format."
SUB_IMAGE = "Based on the provided coordinates, return the sub-image:\n"
ORIGINAL_IMAGE = (
    "Not providing correct coordinates or invalid coordinate values, return the original image:\n"
)
SUB_IMAGE_AFTER = (
    "\nQuestion: {question} {choices}Carefully analyze both the original image and the "
    "enlarged sub-image to solve the question step by step. If the sub-image does not provide "
    "sufficient information, refer to the original image to find the solution. Present your "
    "reasoning clearly, and provide the final answer (A, B, C, D, or E) enclosed within "
    "\\boxed{{}}."
)
ORIGINAL_AFTER = (
    "\nQuestion: {question} {choices}Carefully analyze the original image to solve the "
    "question step by step. Present your reasoning clearly, and provide the final answer (A, "
    "B, C, D, or E) enclosed within \\boxed{{}}."
)

_JSON_BLOCK = re.compile(r"```json\n([\s\S]*?)\n```")
_BOXED = "\\boxed{"


def parse(text: str) -> list[ZoomCall]:
    """The first JSON block holding a box (``truncate_at_json_bbox``), as one call."""
    for match in _JSON_BLOCK.finditer(text):
        try:
            data = json.loads(match.group(1).strip())
        except (ValueError, RecursionError):
            continue
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            continue
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("bbox_2d"), list):
                continue
            label = item.get("label") if isinstance(item.get("label"), str) else None
            raw, span = match.group(0), match.span()
            try:
                box = check_box(item["bbox_2d"])
            except BoxError as exc:
                return [ZoomCall(None, 0, label, "json", str(exc), raw, span)]
            return [ZoomCall(box, 0, label, "json", None, raw, span)]
    return []


def boxed_answer(text: str) -> str:
    """The last ``\\boxed{…}``'s content (braces balanced), else the stripped text."""
    start = text.rfind(_BOXED)
    if start < 0:
        return text.strip()
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return text[i:].strip()


def _choices(options: list[str] | None) -> str:
    if not options:
        return ""
    return "".join(f"{OPTION_LETTERS[i]}. {o}\n" for i, o in enumerate(options))


def feedback(fb: Feedback) -> list[Message]:
    """The turn cut after its JSON block, then the sub-image (or, for an unusable box, the
    original) with the question again."""
    end = fb.calls[0].span[1] if fb.calls else len(fb.text)
    image = fb.images[0] if fb.images else None
    before, after = (
        (SUB_IMAGE, SUB_IMAGE_AFTER)
        if image is not None
        else (
            ORIGINAL_IMAGE,
            ORIGINAL_AFTER,
        )
    )
    after = after.format(question=fb.question, choices=_choices(fb.options))
    parts = [
        {"type": "text", "text": before},
        {"type": "image", "image": image if image is not None else fb.original},
        {"type": "text", "text": after},
    ]
    return [{"role": "assistant", "content": fb.text[:end]}, {"role": "user", "content": parts}]


PROTOCOL = ZoomProtocol(
    name="mgpo",
    title="MGPO",
    source="xinyu1205/verl@mgpo examples/grpo_trainer/run_qwen2_5_vl-7b_mgpo.sh, "
    "verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py",
    call_format='```json\\n[{"bbox_2d": [x1, y1, x2, y2], "label": "…"}]\\n``` '
    "at the end of turn 1",
    coordinates="pixel",
    convention=Convention.QWEN2_5_VL,
    frame_pixels=(MIN_PIXELS, MAX_PIXELS),
    frame="pixels of the image as Qwen2.5-VL's processor resized it (200,704-1,003,520 px)",
    crop_in="user",
    crop_wrapper="Based on the provided coordinates, return the sub-image:\\n<image>\\n"
    "Question: … \\boxed{}",
    observations="none: one sub-image of the original",
    answer_format="\\boxed{…}",
    max_rounds=2,
    system_prompt=lambda hint: SYSTEM_PROMPT,
    parse=parse,
    call_open="```json",  # no function: the chat API returns the block as content
    feedback=feedback,
    user_text=lambda q, options: (
        f"{q}\n{_choices(options)}{POST_PROMPT}" if options else f"{q}\n{POST_PROMPT}"
    ),
    answer=boxed_answer,
    format_issues=lambda text, final: (
        ["the last round has no \\boxed{} answer"] if final and _BOXED not in text else []
    ),
    auto_match=("mgpo",),
)
