"""The zoom protocol registry against the peers' own formats: transcripts written from each
peer's published prompt and output format are parsed and replayed through the real loop
(a scripted engine speaking the peer's format, a magnifier that crops with PIL), the boxes
are compared with what the peer's own code computes (re-stated here from its source), and
the conversation is compared with the peer's layout. Sources: docs/protocols.md."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from PIL import Image

from magsrl.common.images import encode_image
from magsrl.zoom.families import QWEN2_5_VL, QWEN3_VL, resized_size
from magsrl.zoom.loop import LoopOptions, LoopOutcome, ZoomLoop
from magsrl.zoom.protocols import (
    PROTOCOLS,
    chain_of_focus,
    deepeyes,
    get_protocol,
    mgpo,
    mini_o3,
    protocol_names,
    resolve_protocol,
)
from tests.fakes.episode import FakeMagnifier, ScriptedEngine

VISION = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen's image placeholder


def scene(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 240))
    image.paste((200, 0, 0), (size[0] // 2, size[1] // 2, size[0], size[1]))
    return image


def replay(
    image: Image.Image,
    replies: list[str],
    options: list[str] | None = None,
    family: Any = QWEN2_5_VL,
    **opts: Any,
) -> tuple[LoopOutcome, ScriptedEngine, FakeMagnifier]:
    engine = ScriptedEngine(replies, family)
    magnifier = FakeMagnifier()
    loop = ZoomLoop(engine, magnifier)  # type: ignore[arg-type]
    data = encode_image(image, "png")
    outcome = asyncio.run(
        loop.run(image, data, None, "What colour is the sign?", options, LoopOptions(**opts))
    )
    return outcome, engine, magnifier


def flatten(content: list[dict[str, Any]]) -> str:
    """A message's parts as the Qwen template renders them: images as the placeholder."""
    return "".join(VISION if p["type"] == "image" else p["text"] for p in content)


# ---- the registry ---------------------------------------------------------------------


def test_registry_names_aliases_and_auto() -> None:
    """Pins the registry's public names: tags and tools keep working as aliases of magsrl's
    two entries, auto is accepted, and an unknown name lists the known ones."""
    assert set(PROTOCOLS) == {
        "magsrl_tags",
        "magsrl_tools",
        "deepeyes",
        "mini_o3",
        "mgpo",
        "qwen3_vl_thinking",
        "chain_of_focus",
    }
    assert get_protocol("tags") is PROTOCOLS["magsrl_tags"]
    assert get_protocol("tools") is PROTOCOLS["magsrl_tools"]
    assert {"auto", "tags", "tools"} <= set(protocol_names())
    with pytest.raises(ValueError, match="deepeyes"):
        get_protocol("o3")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("ChenShawn/DeepEyes-7B", "deepeyes", id="deepeyes"),
        pytest.param("Mini-o3/Mini-o3-7B-v1", "mini_o3", id="mini-o3"),
        pytest.param("/ckpt/mgpo-qwen2.5-vl-7b", "mgpo", id="mgpo-path"),
        pytest.param("Qwen/Qwen3-VL-8B-Thinking", "qwen3_vl_thinking", id="qwen3-vl-thinking"),
        pytest.param("Qwen/Qwen3-VL-8B-Instruct", "magsrl_tags", id="qwen3-vl-instruct"),
        pytest.param("/ckpt/Chain-of-Focus-7B", "chain_of_focus", id="chain-of-focus"),
        pytest.param("Qwen/Qwen2.5-VL-7B-Instruct", "magsrl_tags", id="unknown"),
    ],
)
def test_auto_picks_the_protocol_from_the_model_name(model: str, expected: str) -> None:
    """Pins auto's rule (docs/protocols.md): a known checkpoint's name picks its protocol;
    anything else gets magsrl's tags."""
    assert resolve_protocol("auto", [model]).name == expected
    assert resolve_protocol("tags", [model]).name == "magsrl_tags"  # a named one wins


def test_every_entry_describes_its_conventions() -> None:
    """Pins GET /v1/protocols' content: every entry states its source, call format,
    coordinates, crop placement, observation references, answer and turn limit."""
    for protocol in PROTOCOLS.values():
        info = protocol.info()
        assert info.source and info.call_format and info.frame and info.observations
        assert info.answer and info.max_rounds >= 2
    assert PROTOCOLS["deepeyes"].info().frame_pixels == [3136, 12_845_056]
    assert PROTOCOLS["mgpo"].info().frame_pixels == [200_704, 1_003_520]
    assert (PROTOCOLS["deepeyes"].max_rounds, PROTOCOLS["mini_o3"].max_rounds) == (5, 12)


# ---- DeepEyes -------------------------------------------------------------------------

# eval/eval_vstar.py, re-stated: the user prompt and its formatting of the options.
DE_USER_PROMPT_V2 = (
    "\nThink first, call **image_zoom_in_tool** if needed, then answer. Format strictly as:  "
    "<think>...</think>  <tool_call>...</tool_call> (if tools needed)  <answer>...</answer> "
)


def de_user_text(question: str, options: list[str]) -> str:
    abc_map = {1: "A", 2: "B", 3: "C", 4: "D", 5: "E", 6: "F"}
    option_str = "\n"
    for i in range(len(options)):
        option_str += abc_map[i + 1] + ". " + options[i] + "\n"
    before = "Question: {question}\nOptions: {options}\n" + DE_USER_PROMPT_V2
    return before.format(question=question, options=option_str)


def de_call(box: list[int], **extra: Any) -> str:
    args = json.dumps({"bbox_2d": box, "label": "the sign", **extra})
    return (
        "<think>The sign is too small to read; I will zoom in on it.</think>\n"
        f'<tool_call>\n{{"name": "image_zoom_in_tool", "arguments": {args}}}\n</tool_call>'
    )


def test_deepeyes_transcript_lands_on_the_peers_pixels_and_layout() -> None:
    """Pins DeepEyes' format: its tool name (not 'unknown tool'), bbox_2d in pixels of the
    processor-resized image (equal to the original's for sides that are multiples of 28,
    where eval_vstar.py's pil_img.crop(bbox) is exact), the verbatim system prompt, its
    'Question/Options' user text, and the crop in a user turn wrapped in <tool_response>."""
    image = scene((672, 476))  # 24x17 patches of 28: the resized frame is the original
    assert resized_size(672, 476, QWEN2_5_VL, deepeyes.MIN_PIXELS, deepeyes.MAX_PIXELS) == (
        672,
        476,
    )
    box = [336, 238, 672, 476]
    outcome, engine, magnifier = replay(
        image,
        [de_call(box), "<think>It is red.</think>  <answer>A</answer>"],
        options=["red", "blue"],
        protocol="deepeyes",
    )
    left, top, right, bottom = box  # eval_vstar.py: pil_img.crop((left, top, right, bottom))
    assert magnifier.calls[0].boxes == [[left, top, right, bottom]]
    assert outcome.rounds[0].zooms[0].label == "the sign"
    assert outcome.answer == "A" and outcome.protocol == "deepeyes"

    first = engine.requests[0]
    assert first.tools is None  # the schema lives in the system prompt, as in the peer
    system = first.messages[0]["content"]
    assert system.startswith("You are a helpful assistant.\n\n# Tools\n")
    schema = json.loads(system.split("<tools>\n")[1].split("\n</tools>")[0])
    assert schema["function"]["name"] == "image_zoom_in_tool"
    assert schema["function"]["parameters"]["required"] == ["bbox"]  # the peer's own slip
    user = first.messages[1]["content"]
    assert user[0]["type"] == "image"
    assert user[1]["text"] == de_user_text("What colour is the sign?", ["red", "blue"])

    assistant, reply = engine.requests[1].messages[-2:]
    assert assistant == {"role": "assistant", "content": de_call(box)}
    assert reply["role"] == "user"
    assert [p["type"] for p in reply["content"]] == ["text", "image", "text", "text"]
    assert flatten(reply["content"]) == (
        "<tool_response>" + VISION + DE_USER_PROMPT_V2 + "</tool_response>"
    )


def test_deepeyes_scales_from_its_processor_frame() -> None:
    """Pins the frame: on an image over 12,845,056 px the model sees it resized, and a box
    in that frame is scaled back to the original (not read as original pixels)."""
    image = scene((4480, 3360))  # 15.05 Mpx: resized below the DeepEyes limit
    fw, fh = resized_size(4480, 3360, QWEN2_5_VL, deepeyes.MIN_PIXELS, deepeyes.MAX_PIXELS)
    assert fw * fh <= deepeyes.MAX_PIXELS < 4480 * 3360
    box = [fw // 2, fh // 2, fw, fh]
    _, _, magnifier = replay(image, [de_call(box), "<answer>red</answer>"], protocol="deepeyes")
    x1, y1, x2, y2 = magnifier.calls[0].boxes[0]
    assert (x2, y2) == (4480, 3360)
    assert abs(x1 - round(fw // 2 * 4480 / fw)) <= 1 and abs(y1 - round(fh // 2 * 3360 / fh)) <= 1


# ---- Mini-o3 --------------------------------------------------------------------------

# Mini-o3's TOOL_CALL_CROP_MULTI_TRUN_PROMPT, re-stated with its image placeholder.
MO3_OBSERVATION = (
    "After the above Action {action_turn}, here is the the zoom-in image (Observation "
    "{observation_turn}):\n<|vision_start|><|image_pad|><|vision_end|>.\nContinue your "
    "reasoning process inside <think> and </think>. If needed, you can continue to zoom in "
    "on the original image or any of the observations, by outputting <grounding> and "
    "</grounding> as before. If the final answer is confirmed, put your final answer inside "
    "<answer> and </answer>."
)


def mo3_pixels(bbox: list[float], w: int, h: int) -> list[int]:
    """prepare_grounding_inputs_multi_turn with relative coordinates, re-stated."""
    x0, y0, x1, y1 = (bbox[0] * w, bbox[1] * h, bbox[2] * w, bbox[3] * h)
    box = [int(x0), int(y0), int(x1), int(y1)]
    return [max(box[0], 0), max(box[1], 0), min(box[2], w - 1), min(box[3], h - 1)]


def grounding(box: list[float], source: str) -> str:
    call = json.dumps({"bbox_2d": box, "source": source})
    return f"<think>I need a closer look.</think> <grounding>{call}</grounding>"


MO3_TRANSCRIPT = [
    grounding([0.25, 0.25, 0.75, 0.75], "original_image"),
    grounding([0.25, 0.25, 0.75, 0.75], "observation_1"),
    "<think>Now the sign is clear: it is red.</think><answer>A</answer>",
]


def test_mini_o3_transcript_zooms_into_an_observation_like_the_peer() -> None:
    """Pins Mini-o3's format: <grounding> parsed (it was not at all), 0-1 boxes of the image
    named by source, observation_1 mapping through the first crop onto the original as
    the peer's code composes it, the 'Observation n' user turns verbatim, and the turn
    limit of 12 when the caller sets none."""
    image = scene((800, 600))
    outcome, engine, magnifier = replay(
        image, list(MO3_TRANSCRIPT), options=["red", "blue"], protocol="mini_o3"
    )
    first = mo3_pixels([0.25, 0.25, 0.75, 0.75], 800, 600)
    assert magnifier.calls[0].boxes == [first]
    # Observation 1 is the first crop; the peer crops it at its own relative box, which is
    # the original's region offset by the crop's origin (the crop is 1:1 here).
    ow, oh = first[2] - first[0], first[3] - first[1]
    on_obs = mo3_pixels([0.25, 0.25, 0.75, 0.75], ow, oh)
    expected = [first[0] + on_obs[0], first[1] + on_obs[1], first[0] + on_obs[2]]
    expected.append(first[1] + on_obs[3])
    assert magnifier.calls[1].boxes == [expected]
    assert [z.img_idx for r in outcome.rounds for z in r.zooms] == [0, 1]
    assert outcome.answer == "A" and len(outcome.rounds) == 3

    assert engine.requests[0].messages[0]["content"] == mini_o3.SYSTEM_PROMPT
    # The engine keeps the live list: read the turns from the final conversation.
    turns = outcome.messages[2:]
    assert len(turns) == 4
    for action in range(2):
        assistant, observation = turns[2 * action : 2 * action + 2]
        assert assistant == {"role": "assistant", "content": MO3_TRANSCRIPT[action]}
        assert observation["role"] == "user"
        assert flatten(observation["content"]) == MO3_OBSERVATION.format(
            action_turn=action, observation_turn=action + 1
        )

    loop = ZoomLoop(ScriptedEngine([], QWEN2_5_VL), FakeMagnifier())  # type: ignore[arg-type]
    episode = loop.start(image, None, None, "q", None, LoopOptions(protocol="mini_o3"))
    assert episode.max_rounds == 12


def test_mini_o3_bad_source_is_told_to_the_model() -> None:
    """Pins an observation that does not exist crashing the episode: it becomes an error
    in the peer's error prompt and the model goes on."""
    outcome, engine, magnifier = replay(
        scene((800, 600)),
        [grounding([0.1, 0.1, 0.5, 0.5], "observation_3"), "<answer>red</answer>"],
        protocol="mini_o3",
    )
    assert not magnifier.calls and outcome.zoom_errors == 1
    text = flatten(engine.requests[1].messages[-1]["content"])
    assert "img_idx 3 does not exist" in text
    assert text.endswith(mini_o3.ERROR_PROMPT)


def test_mini_o3_parser_reads_the_peer_output_forms() -> None:
    """Pins the parser on the peer's outputs, by Mini-o3/Mini-o3's own rules
    (vllm_async_engine.py process_tool_call, function_tools.py
    prepare_grounding_inputs_multi_turn): both sources, a source with a suffix read by
    its prefix (re.match), and bad JSON, an unknown source or a missing source (the peer's
    regex requires it; it was read as the original) as errors, never an exception."""

    def one(args: str) -> Any:
        calls = mini_o3.parse(f"<grounding>{args}</grounding>")
        assert len(calls) == 1
        return calls[0]

    ok = one('{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "source": "observation_2"}')
    assert (ok.box, ok.img_idx, ok.error) == ((0.1, 0.2, 0.3, 0.4), 2, None)
    assert one('{"bbox_2d": [0, 0, 1, 1], "source": "original_image"}').img_idx == 0
    assert one('{"bbox_2d": [0, 0, 1, 1], "source": "observation_1 "}').img_idx == 1
    assert "source" in (one('{"bbox_2d": [0.1, 0.2, 0.3, 0.4]}').error or "")
    assert one("{bbox_2d: oops}").error
    assert "image_2" in (one('{"bbox_2d": [0, 0, 1, 1], "source": "image_2"}').error or "")


def test_mini_o3_reads_one_grounding_per_turn_and_answers_errors_as_the_peer() -> None:
    """Pins two departures from Mini-o3/Mini-o3 (8654dbf): every <grounding> of a turn was
    read, where the peer's rollout stops at </grounding> (ppo_trainer.yaml `stop`) and
    reads one; and a failed request came back as "Error: ..." where process_tool_call
    writes "ERROR occurs during grounding. Error Information: {e}.\\n" followed by
    ERROR_INFO_MULTI_TURN_PROMPT. The observation after turn k is numbered k + 1, as
    process_tool_call numbers it (observation_turn=current_iteration+1)."""
    two = grounding([0.1, 0.1, 0.5, 0.5], "original_image") + grounding(
        [0.5, 0.5, 0.9, 0.9], "original_image"
    )
    assert [c.box for c in mini_o3.parse(two)] == [(0.1, 0.1, 0.5, 0.5)]
    outcome, _, magnifier = replay(
        scene((800, 600)),
        [
            grounding([0.1, 0.1, 0.5, 0.5], "observation_3"),
            grounding([0.1, 0.1, 0.5, 0.5], "original_image"),
            "<answer>red</answer>",
        ],
        protocol="mini_o3",
    )
    turns = outcome.messages[2:]  # the engine keeps the live list: read the final one
    error = flatten(turns[1]["content"])
    assert error.startswith("ERROR occurs during grounding. Error Information: ")
    assert error.endswith(".\n" + mini_o3.ERROR_PROMPT)
    observation = flatten(turns[3]["content"])
    assert observation == MO3_OBSERVATION.format(action_turn=1, observation_turn=2)
    assert len(magnifier.calls) == 1


# ---- MGPO -----------------------------------------------------------------------------


def mgpo_crop(bbox: list[int], resized: tuple[int, int], original: tuple[int, int]) -> list[int]:
    """vllm_rollout_spmd.py crop_image, re-stated."""
    (rw, rh), (ow, oh) = resized, original
    x1, y1, x2, y2 = bbox
    return [int(x1 / rw * ow), int(y1 / rh * oh), int(x2 / rw * ow), int(y2 / rh * oh)]


def test_mgpo_transcript_crops_from_its_resized_frame_and_answers_boxed() -> None:
    """Pins MGPO's format: the ```json box list at the end of turn 1 in the 200,704-
    1,003,520 px frame scaled to the original as crop_image does, the turn cut after that
    block, the sub-image in a user turn with the question again, and the \\boxed{} answer."""
    size = (2240, 1680)
    frame = resized_size(*size, QWEN2_5_VL, mgpo.MIN_PIXELS, mgpo.MAX_PIXELS)
    box = [frame[0] // 4, frame[1] // 4, frame[0] // 2, frame[1] // 2]
    turn1 = (
        "The sign is in the upper left.\n"
        f'```json\n[{{"bbox_2d": {box}, "label": "sign"}}]\n```\nstray text after the block'
    )
    outcome, engine, magnifier = replay(
        scene(size),
        [turn1, "The sub-image shows a red sign. \\boxed{A}"],
        options=["red", "blue"],
        protocol="mgpo",
    )
    expected = mgpo_crop(box, frame, size)
    got = magnifier.calls[0].boxes[0]
    assert all(abs(a - b) <= 1 for a, b in zip(got, expected, strict=True)), (got, expected)
    assert outcome.answer == "A"
    assistant, user = engine.requests[1].messages[-2:]
    assert assistant["content"].endswith("```") and "stray" not in assistant["content"]
    assert flatten(user["content"]).startswith(
        "Based on the provided coordinates, return the sub-image:\n" + VISION
    )
    assert "Question: What colour is the sign? A. red\nB. blue\n" in flatten(user["content"])


def test_mgpo_boxed_answer_reads_nested_braces() -> None:
    """Pins \\boxed{} extraction cutting at the first closing brace."""
    assert mgpo.boxed_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert mgpo.boxed_answer("no box") == "no box"


# ---- Qwen3-VL Thinking ------------------------------------------------------------------


def qwen_call(box: list[int], img_idx: int) -> str:
    args = json.dumps({"bbox_2d": box, "label": "the sign", "img_idx": img_idx})
    return (
        "The sign is far away, so I should zoom in.\n</think>\n\n"
        f'<tool_call>\n{{"name": "image_zoom_in_tool", "arguments": {args}}}\n</tool_call>'
    )


def qwen_agent_pixels(bbox: list[int], w: int, h: int) -> list[float]:
    """image_zoom_in_qwen3vl.py: rel / 1000 * size (boxes of 32 px and more kept as is)."""
    return [bbox[0] / 1000 * w, bbox[1] / 1000 * h, bbox[2] / 1000 * w, bbox[3] / 1000 * h]


def test_qwen3_vl_thinking_zooms_in_0_1000_of_the_image_it_names() -> None:
    """Pins Qwen-Agent's zoom tool for Qwen3-VL Thinking: image_zoom_in_tool with 0-1000
    boxes of image img_idx (a crop, the second time), the schema sent as tools with no
    system prompt of magsrl's, each crop in a tool message, and the answer read after
    </think> (the template opened the <think>)."""
    image = scene((640, 480))
    replies = [
        qwen_call([500, 500, 1000, 1000], 0),
        qwen_call([0, 0, 500, 500], 1),
        "The crop shows a red sign.\n</think>\n\nThe sign is red.",
    ]
    outcome, engine, magnifier = replay(
        image, replies, family=QWEN3_VL, protocol="qwen3_vl_thinking"
    )
    first = qwen_agent_pixels([500, 500, 1000, 1000], 640, 480)
    assert magnifier.calls[0].boxes == [first]
    on_crop = qwen_agent_pixels([0, 0, 500, 500], first[2] - first[0], first[3] - first[1])
    expected = [first[0] + on_crop[0], first[1] + on_crop[1], first[0] + on_crop[2]]
    expected.append(first[1] + on_crop[3])
    assert magnifier.calls[1].boxes == [expected]
    assert outcome.answer == "The sign is red."

    request = engine.requests[0]
    assert request.messages[0]["role"] == "user"  # the template's own system, none of ours
    assert request.tools and request.tools[0]["function"]["name"] == "image_zoom_in_tool"
    turns = outcome.messages[1:]
    assert turns[0] == {"role": "assistant", "content": replies[0]}
    assert turns[1]["role"] == "tool" and turns[1]["content"][0]["type"] == "image"


# ---- Chain-of-Focus ---------------------------------------------------------------------

COF_USER_PROMPT = (
    "\nThink in the mind first, and then decide whether to call tools one or more times OR "
    "provide final answer. Format strictly as: <think>...</think> <tool_call>...</tool_call> "
    "<tool_call>...</tool_call> (if any tools needed) OR <answer>...</answer> (if no tools "
    "needed)."
)


def cof_pixels(bbox: list[float], w: int, h: int, enlarge: float = 1.5) -> list[int]:
    """find_absolute_bboxes with enlarge_factor, re-stated."""
    x0, y0, x1, y1 = bbox
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * enlarge, (y1 - y0) * enlarge
    x0, y0 = max(0, cx - bw / 2), max(0, cy - bh / 2)
    x1, y1 = min(w, cx + bw / 2), min(h, cy + bh / 2)
    return [int(x0), int(y0), int(x1), int(y1)]


def test_chain_of_focus_enlarges_the_box_and_repeats_the_instruction() -> None:
    """Pins Chain-of-Focus' format: image_zoom_in_tool in pixels of its resized frame,
    the box grown 1.5x about its centre and clipped as find_absolute_bboxes does, only the
    first call read, the crop in a user turn followed by USER_PROMPT, the question as
    "Question: …" + USER_PROMPT, and 6 turns at most."""
    image = scene((672, 476))  # multiples of 28 within 112²-3840²: the frame is the image
    box = [448, 300, 640, 460]  # near the corner: the enlarged box is clipped
    call = json.dumps({"name": "image_zoom_in_tool", "arguments": {"bbox_2d": box}})
    other = json.dumps({"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, 56, 56]}})
    turn = (
        f"<think>On the sign.</think> <tool_call>{call}</tool_call> <tool_call>{other}</tool_call>"
    )
    outcome, engine, magnifier = replay(
        image, [turn, "<think>Red.</think> <answer>red</answer>"], protocol="chain_of_focus"
    )
    expected = cof_pixels(box, 672, 476)
    got = magnifier.calls[0].boxes
    assert len(got) == 1  # the eval reads the first call only
    assert all(abs(a - b) <= 1 for a, b in zip(got[0], expected, strict=True)), (got, expected)
    assert outcome.answer == "red"
    first = engine.requests[0].messages
    assert first[0]["content"] == chain_of_focus.SYSTEM_PROMPT
    question = first[1]["content"][1]["text"]
    assert question == f"Question: What colour is the sign?{COF_USER_PROMPT}"
    reply = outcome.messages[-1]
    assert reply["role"] == "user"
    assert [p["type"] for p in reply["content"]] == ["image", "text"]
    assert reply["content"][1]["text"] == COF_USER_PROMPT
    assert chain_of_focus.PROTOCOL.max_rounds == 6


# ---- magsrl's own entries -------------------------------------------------------------


def test_magsrl_tags_and_tools_still_take_the_family_convention() -> None:
    """Pins the two original protocols through the registry: Qwen3-VL 0-1000 boxes in tags
    and a tool call, and only the tools entry sends the zoom schema as tools."""
    image = scene((640, 480))
    tag = "<think><zoom>[[0, 0, 500, 500]]</zoom></think>"
    _, engine, magnifier = replay(image, [tag, "<answer>x</answer>"], family=QWEN3_VL)
    assert magnifier.calls[0].boxes == [[0, 0, 320, 240]] and engine.requests[0].tools is None
    call = '<tool_call>{"name": "zoom", "arguments": {"bbox_2d": [0, 0, 500, 500]}}</tool_call>'
    _, engine, magnifier = replay(
        image, [call, "<answer>x</answer>"], family=QWEN3_VL, protocol="tools"
    )
    assert magnifier.calls[0].boxes == [[0, 0, 320, 240]] and engine.requests[0].tools
    assert engine.requests[1].messages[-1]["role"] == "tool"
    assert math.isclose(len(engine.requests[1].messages), 4)


# ---- the rendered prompt, character for character --------------------------------------


def rendered(tiny_model_dir: Any, messages: list[dict[str, Any]]) -> str:
    """The conversation through Qwen2.5-VL's chat template (the peers' base model), as the
    policy's hf engine renders it."""
    from transformers import AutoTokenizer

    from magsrl.zoom.engine import split_images
    from magsrl.zoom.families import template_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain, _ = split_images(messages)
    return tokenizer.apply_chat_template(
        plain, chat_template=template_text(QWEN2_5_VL), tokenize=False
    )


def test_peer_turns_render_as_the_peers_prompts(tiny_model_dir: Any) -> None:
    """Pins the token-level layout the checkpoints were trained on: Mini-o3's observation
    turn is exactly its TOOL_CALL_CROP_MULTI_TRUN_PROMPT inside a user turn, and DeepEyes'
    reply is exactly <tool_response>, the image, USER_PROMPT_V2, </tool_response>."""
    outcome, _, _ = replay(scene((800, 600)), list(MO3_TRANSCRIPT), protocol="mini_o3")
    text = rendered(tiny_model_dir, outcome.messages)
    for action in range(2):
        observation = MO3_OBSERVATION.format(action_turn=action, observation_turn=action + 1)
        turn = f"{MO3_TRANSCRIPT[action]}<|im_end|>\n<|im_start|>user\n{observation}<|im_end|>"
        assert turn in text
    assert text.startswith(f"<|im_start|>system\n{mini_o3.SYSTEM_PROMPT}<|im_end|>")

    box = [336, 238, 672, 476]
    outcome, _, _ = replay(
        scene((672, 476)),
        [de_call(box), "<answer>A</answer>"],
        options=["red", "blue"],
        protocol="deepeyes",
    )
    text = rendered(tiny_model_dir, outcome.messages)
    question = de_user_text("What colour is the sign?", ["red", "blue"])
    assert f"<|im_start|>user\n{VISION}{question}<|im_end|>" in text
    reply = f"<|im_start|>user\n<tool_response>{VISION}{DE_USER_PROMPT_V2}</tool_response>"
    assert f"{de_call(box)}<|im_end|>\n{reply}<|im_end|>" in text
