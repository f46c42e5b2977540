"""Mini-o3 (Mini-o3/Mini-o3): ``<grounding>{"bbox_2d": [x0, y0, x1, y1], "source":
"original_image" | "observation_k"}</grounding>`` with 0-1 coordinates of the image named by
``source``, each crop sent back in a user turn "After the above Action k, here is the the
zoom-in image (Observation n): <image>. Continue …", up to 12 turns at test time, the
answer in ``<answer>``.

Read from the peer's own repository, Mini-o3/Mini-o3 at 8654dbf:
- ``verl/trainer/constants.py``: ``TOOL_CROP_SYSTEM_PROMPT``, ``TOOL_CALL_CROP_MULTI_TRUN_PROMPT``
  and ``ERROR_INFO_MULTI_TURN_PROMPT``, kept verbatim (typos included: the model was trained
  on them);
- ``verl/workers/rollout/vllm_rollout/vllm_async_engine.py``, ``process_tool_call``: one
  grounding per turn (the rollout stops at ``</grounding>``, ``stop`` in
  ``verl/trainer/config/ppo_trainer.yaml``), read with the regex
  ``.*<grounding>{"bbox_2d": (.*),.*"source": ['"](.*)['"]}</grounding>`` (so ``source`` is
  required); a failure comes back as "ERROR occurs during grounding. Error Information:
  {error}.\n" + ERROR_INFO_MULTI_TURN_PROMPT; a crop as TOOL_CALL_CROP_MULTI_TRUN_PROMPT with
  ``action_turn`` the 0-based turn and ``observation_turn`` that turn + 1;
- ``verl/workers/rollout/vllm_rollout/function_tools.py``,
  ``prepare_grounding_inputs_multi_turn``: ``source`` "original_image" is observation 0,
  else ``re.match("observation_([0-9]*)")``; with ``use_relative_coordinates=True`` (the
  README's run) the box is ``[x0*w, y0*h, x1*w, y1*h]`` on that observation, truncated to
  ints and clamped inside it;
- ``README.md``: ``val_max_generation_round=12`` (6 in training), ``min_pixels=40000``,
  ``max_pixels=2000000``.
magsrl rounds rather than truncates (at most 1 px apart) and maps a box on observation k
back to the original, so the magnifier crops the full-resolution image.
"""

from __future__ import annotations

import json
import re
from typing import Any

from magsrl.common.coords import BoxError, Convention, check_box
from magsrl.proto.prompts import format_options
from magsrl.zoom.protocols.base import Feedback, Message, ZoomProtocol, answer_issues
from magsrl.zoom.zoom_requests import ZoomCall, short

MAX_ROUNDS = 12
MIN_PIXELS = 40_000
MAX_PIXELS = 2_000_000

SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's question based on the image provided. "
    "Output your thinking process within the <think> and </think> tags. Whenever you find "
    "anything unclear, you can zoom in a specific region in the given image to see more "
    'clearly by outputing <grounding>{"bbox_2d": [x0, y0, x1, y1], "source": '
    '"original_image"}</grounding>, where (x0, y0) and (x1, y1) are the top-left and '
    "bottom-right coordinates of the region that you want to zoom in, respectively (suppose "
    "the width and height of the image are 1.0), and 'source' refers to the image that you "
    "zoom in and could be either 'original_image' or 'observation_i'. Once the final answer "
    "is confirmed, put it within <answer> and </answer>."
)
# TOOL_CALL_CROP_MULTI_TRUN_PROMPT, split at its image placeholder.
OBSERVATION_BEFORE = (
    "After the above Action {action}, here is the the zoom-in image (Observation {observation}):\n"
)
OBSERVATION_AFTER = (
    ".\nContinue your reasoning process inside <think> and </think>. If needed, you can "
    "continue to zoom in on the original image or any of the observations, by outputting "
    "<grounding> and </grounding> as before. If the final answer is confirmed, put your final "
    "answer inside <answer> and </answer>."
)
ERROR_PROMPT = (
    "Please analyze the error information obtained from the function tool and adjust your "
    "response. Countinue your reasoning process inside <think> and </think>."
)
# process_tool_call's error text, before ERROR_INFO_MULTI_TURN_PROMPT.
ERROR_INFO = "ERROR occurs during grounding. Error Information: {error}.\n"

_GROUNDING = re.compile(r"<grounding>(.*?)(</grounding>|$)", re.DOTALL)
# function_tools.py: re.match("observation_([0-9]*)", source), a prefix match.
_OBSERVATION = re.compile(r"observation_(\d+)")
SOURCES = ("original_image", "observation_k")


def parse(text: str) -> list[ZoomCall]:
    """The turn's ``<grounding>`` request (the first: the peer's rollout stops generating at
    ``</grounding>``, so what follows one was never part of its turns); ``source`` becomes
    ``img_idx`` (original_image 0, observation_k k) and is required, as the peer's regex
    requires it. Nothing raises: a bad request comes back with ``error`` set."""
    calls = []
    for match in list(_GROUNDING.finditer(text))[:1]:
        raw, span = match.group(0), match.span()

        def failed(reason: str, raw: str = raw, span: tuple[int, int] = span) -> ZoomCall:
            return ZoomCall(None, 0, None, "grounding", reason, raw, span)

        if not match.group(2):
            calls.append(failed("<grounding> is not closed by </grounding>"))
            continue
        try:
            args = json.loads(match.group(1).strip())
        except (ValueError, RecursionError):
            calls.append(failed("the grounding is not valid JSON"))
            continue
        if not isinstance(args, dict) or not isinstance(args.get("bbox_2d"), list):
            calls.append(failed(f'expected {{"bbox_2d": [...], "source": ...}}, got {short(args)}'))
            continue
        if "source" not in args:
            calls.append(
                failed('the grounding has no "source" ("original_image" or "observation_k")')
            )
            continue
        source = args["source"]
        found = _OBSERVATION.match(source) if isinstance(source, str) else None
        if source != "original_image" and found is None:
            calls.append(
                failed(f"source {short(source)} is neither original_image nor observation_k")
            )
            continue
        img_idx = int(found.group(1)) if found else 0
        try:
            box = check_box(args["bbox_2d"])
        except BoxError as exc:
            calls.append(ZoomCall(None, img_idx, None, "grounding", str(exc), raw, span))
            continue
        calls.append(ZoomCall(box, img_idx, None, "grounding", None, raw, span))
    return calls


def chat_tool() -> dict[str, Any]:
    """``<grounding>`` as an OpenAI function, magsrl's wrapping (the peer declares no
    function: its system prompt describes the tag): a client serving Mini-o3 declares this
    ``grounding`` tool to get the requests back as tool_calls. The checkpoint never sees
    it (its own system prompt is the one it was trained on)."""
    return {
        "type": "function",
        "function": {
            "name": "grounding",
            "description": "Zoom in on a region of the original image or of an earlier "
            "observation (Mini-o3's <grounding>).",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": "[x0, y0, x1, y1], 0-1 of the source image.",
                    },
                    "source": {
                        "type": "string",
                        "description": "original_image, or observation_k for the k-th crop.",
                    },
                },
                "required": ["bbox_2d", "source"],
            },
        },
    }


def tool_arguments(call: ZoomCall) -> dict[str, Any]:
    """The request as the model wrote it: the 0-1 box and its source."""
    assert call.box is not None
    source = f"observation_{call.img_idx}" if call.img_idx else "original_image"
    return {"bbox_2d": [int(v) if v.is_integer() else v for v in call.box], "source": source}


def feedback(fb: Feedback) -> list[Message]:
    """The assistant turn verbatim, then a user turn: the crop as "Observation n" or the
    peer's error text. Like ``process_tool_call``, n is the turn + 1, not the count of crops
    made (they differ after a failed turn; ``source`` still indexes the crops made)."""
    out: list[Message] = [{"role": "assistant", "content": fb.text}]
    parts: list[Message] = []
    for zoom, image in zip(fb.zooms, fb.images, strict=True):
        if image is None:
            parts.append(
                {"type": "text", "text": ERROR_INFO.format(error=zoom.error) + ERROR_PROMPT}
            )
            continue
        before = OBSERVATION_BEFORE.format(action=fb.round_index, observation=fb.round_index + 1)
        parts += [
            {"type": "text", "text": before},
            {"type": "image", "image": image},
            {"type": "text", "text": OBSERVATION_AFTER},
        ]
    out.append({"role": "user", "content": parts})
    return out


PROTOCOL = ZoomProtocol(
    name="mini_o3",
    title="Mini-o3",
    source="Mini-o3/Mini-o3 (8654dbf): verl/trainer/constants.py (the prompts), "
    "verl/workers/rollout/vllm_rollout/vllm_async_engine.py process_tool_call (the "
    "<grounding> regex, the turn layout), verl/workers/rollout/vllm_rollout/function_tools.py "
    "prepare_grounding_inputs_multi_turn (the box), README.md (12 turns at test time)",
    call_format='<grounding>{"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}</grounding>',
    coordinates="norm1",
    convention=Convention.NORM1,
    frame="0-1 of the image named by source",
    crop_in="user",
    crop_wrapper="After the above Action k, here is the the zoom-in image (Observation n):"
    "\\n<image>.\\nContinue your reasoning process …",
    observations='source: "original_image" or "observation_k" (k = 1 is the first crop)',
    answer_format="<answer>…</answer>",
    max_rounds=MAX_ROUNDS,
    system_prompt=lambda hint: SYSTEM_PROMPT,
    parse=parse,
    chat_tool=chat_tool,
    tool_arguments=tool_arguments,
    call_open="<grounding>",
    render_call=lambda arguments: f"<grounding>{json.dumps(arguments)}</grounding>",
    feedback=feedback,
    user_text=lambda q, options: format_options(q, options) if options else q,
    format_issues=answer_issues,
    auto_match=("mini-o3", "mini_o3", "minio3"),
)
