"""The peers' zoom tools on ``/v1/chat/completions``: the real policy app (its routes, the
chat service, the registry) with a scripted engine that writes DeepEyes' and Mini-o3's raw
formats, spoken to with the official ``openai`` SDK over the app's HTTP interface, one-shot
and streamed in small pieces."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from magsrl.common.images import encode_image
from magsrl.policy import app as policy_app_module
from magsrl.policy.config import PolicySettings
from magsrl.policy.peer_tools import PeerCallParser, peer_tools
from magsrl.zoom.engine import GenerationRequest, GenerationResult, StreamDelta
from magsrl.zoom.families import QWEN2_5_VL
from magsrl.zoom.protocols import PROTOCOLS, get_protocol
from magsrl.zoom.protocols.deepeyes import SYSTEM_PROMPT as DEEPEYES_SYSTEM
from magsrl.zoom.protocols.mini_o3 import SYSTEM_PROMPT as MINI_O3_SYSTEM
from tests.fakes.episode import ScriptedEngine
from tests.test_protocols_serving import IMAGE

DATA_URL = "data:image/png;base64," + base64.b64encode(encode_image(IMAGE, "png")).decode()

# DeepEyes' raw turn (eval/eval_vstar.py's format), with a zoom into the first crop.
DEEPEYES_TURN = (
    "<think>The sign is small; the crop shows it.</think>\n<tool_call>\n"
    '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [280, 196, 560, 392], '
    '"label": "the sign", "img_idx": 1}}\n</tool_call>'
)
# Mini-o3's raw turn (TOOL_CROP_SYSTEM_PROMPT's format), zooming into observation 1.
MINI_O3_TURN = (
    "<think>Closer still.</think> <grounding>"
    '{"bbox_2d": [0.5, 0.5, 1.0, 1.0], "source": "observation_1"}</grounding>'
)


class PiecewiseEngine(ScriptedEngine):
    """The scripted engine, streaming its reply in 3-character pieces (a call's opening
    tag split across deltas), as a real sampler does."""

    async def stream(  # type: ignore[override]
        self, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        result = await self.generate(request)
        text = result.completions[0].text
        for i in range(0, len(text), 3):
            yield StreamDelta(index=0, text=text[i : i + 3])
        yield result


class Chat:
    def __init__(self, client: TestClient, settings: PolicySettings) -> None:
        self.client, self.settings = client, settings
        self.sdk = openai.OpenAI(
            base_url="http://testserver/v1", api_key="unused", max_retries=0, http_client=client
        )

    def script(self, replies: list[str], model: str = "m") -> PiecewiseEngine:
        engine = PiecewiseEngine(replies, QWEN2_5_VL, base_model=model)
        state = self.client.app.state  # type: ignore[attr-defined]
        state.engine = engine
        state.chat.engine = engine
        return engine


@pytest.fixture
def chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[Chat]:
    settings = PolicySettings(policy_model="m")  # type: ignore[call-arg]
    monkeypatch.setattr(policy_app_module, "build_engine", lambda s: ScriptedEngine([], QWEN2_5_VL))
    with TestClient(policy_app_module.create_app(settings)) as client:
        yield Chat(client, settings)


def messages(system: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": DATA_URL}},
                {"type": "text", "text": "What colour is the sign?"},
            ],
        },
    ]


CASES = [
    pytest.param(
        "deepeyes",
        DEEPEYES_SYSTEM,
        DEEPEYES_TURN,
        "<think>The sign is small; the crop shows it.</think>",
        {"bbox_2d": [280, 196, 560, 392], "label": "the sign", "img_idx": 1},
        id="deepeyes",
    ),
    pytest.param(
        "mini_o3",
        MINI_O3_SYSTEM,
        MINI_O3_TURN,
        "<think>Closer still.</think>",
        {"bbox_2d": [0.5, 0.5, 1, 1], "source": "observation_1"},
        id="mini-o3",
    ),
]


@pytest.mark.parametrize(("protocol", "system", "turn", "content", "arguments"), CASES)
def test_chat_returns_a_peer_call_as_tool_calls(
    chat: Chat,
    protocol: str,
    system: str,
    turn: str,
    content: str,
    arguments: dict[str, Any],
) -> None:
    """Pins the chat path knowing only magsrl's `zoom`: a client serving a DeepEyes or
    Mini-o3 checkpoint declared the peer's tool (its schema from the registry) and got
    "unknown tool" or the raw <grounding> text back. Now the call comes back as an OpenAI
    tool call named as declared, with the peer's own arguments (DeepEyes' resized-frame
    pixels and label, Mini-o3's 0-1 box and observation source), streamed or not, and the
    schema is not rendered into the prompt a second time (the checkpoint reads it in its
    own system prompt)."""
    tool = get_protocol(protocol).chat_tool
    assert tool is not None
    engine = chat.script([turn, turn])
    reply = chat.sdk.chat.completions.create(
        model="m",
        messages=messages(system),  # type: ignore[arg-type]
        tools=[tool()],  # type: ignore[list-item]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == content
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (tool()["function"]["name"], arguments)
    ]
    assert engine.requests[0].tools is None

    stream = chat.sdk.chat.completions.create(
        model="m",
        messages=messages(system),  # type: ignore[arg-type]
        tools=[tool()],  # type: ignore[list-item]
        stream=True,
    )
    text, streamed, finish = "", [], None
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            streamed += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert text == content and finish == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in streamed] == [  # type: ignore[union-attr]
        (c.id, c.function.name, c.function.arguments) for c in calls
    ]
    assert chat.sdk.models.list().data  # the server still serves


def test_the_served_protocol_decides_a_shared_tool_name(chat: Chat) -> None:
    """Pins the registry's order deciding alone: DeepEyes, Chain-of-Focus and Qwen3-VL all
    name their tool image_zoom_in_tool. A policy serving Qwen3-VL Thinking (auto, by its
    model name) reads the call with img_idx (its schema requires it) and renders the
    schema through the template, as that checkpoint was trained; with no served peer the
    first registered (DeepEyes) reads it."""
    chat.settings.zoom_protocol = "auto"  # type: ignore[assignment]
    tool = PROTOCOLS["qwen3_vl_thinking"].chat_tool
    assert tool is not None
    turn = (
        'The sign.</think>\n\n<tool_call>\n{"name": "image_zoom_in_tool", "arguments": '
        '{"bbox_2d": [100, 100, 500, 500], "label": "sign"}}\n</tool_call>'
    )
    engine = chat.script([turn], model="Qwen/Qwen3-VL-8B-Thinking")
    reply = chat.sdk.chat.completions.create(
        model="Qwen/Qwen3-VL-8B-Thinking",
        messages=messages("")[1:],  # type: ignore[arg-type]
        tools=[tool()],  # type: ignore[list-item]
    )
    calls = reply.choices[0].message.tool_calls or []
    assert json.loads(calls[0].function.arguments) == {
        "bbox_2d": [100, 100, 500, 500],
        "label": "sign",
        "img_idx": 0,
    }
    assert engine.requests[0].tools == [tool()]
    chosen = peer_tools(["image_zoom_in_tool"], PROTOCOLS["magsrl_tags"])
    assert chosen is not None and chosen.protocol.name == "deepeyes"


def test_zoom_still_takes_magsrl_path_and_a_bad_peer_call_is_not_content(chat: Chat) -> None:
    """Pins the magsrl path unchanged (`zoom` declared: a <zoom> tag is a tool call and the
    tools reach the engine) and a peer's unusable call dropped from content and calls
    alike, as the zoom path drops a broken <tool_call>, never a 500."""
    from magsrl.proto.tools import zoom_tool

    engine = chat.script(["<think>look<zoom>[[1, 2, 30, 40]]</zoom></think>"])
    reply = chat.sdk.chat.completions.create(
        model="m",
        messages=messages("s"),  # type: ignore[arg-type]
        tools=[zoom_tool()],  # type: ignore[list-item]
    )
    calls = reply.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["zoom"]
    assert engine.requests[0].tools == [zoom_tool()]

    tool = PROTOCOLS["mini_o3"].chat_tool
    assert tool is not None
    chat.script(['<think>t</think> <grounding>{"bbox_2d": [0.1, 0.1, 0.5, 0.5]}</grounding>'])
    reply = chat.sdk.chat.completions.create(
        model="m",
        messages=messages(MINI_O3_SYSTEM),  # type: ignore[arg-type]
        tools=[tool()],  # type: ignore[list-item]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "grounding" in (choice.message.content or "")  # no call: the text as sampled


@pytest.mark.parametrize("size", [1, 2, 5, 11])
def test_peer_stream_parser_matches_the_one_shot_parse(size: int) -> None:
    """Pins the streaming parser against the one-shot parse for any chunking: content
    deltas join to the non-streaming content (a "<grou" split across deltas is held, a
    "<" that opens nothing is shown) and the calls are equal."""
    tools = peer_tools(["grounding"], PROTOCOLS["magsrl_tags"])
    assert tools is not None
    text = "a < b <gr " + MINI_O3_TURN + " then"
    parser = PeerCallParser(tools)
    events: list[Any] = []
    for i in range(0, len(text), size):
        events += parser.feed(text[i : i + size])
    events += parser.finish()
    content, calls = tools.parse(text)
    assert "".join(e.text for e in events if not isinstance(e, dict)) == content
    assert [e for e in events if isinstance(e, dict)] == calls and len(calls) == 1


def test_mini_o3_call_sent_back_is_written_as_the_model_wrote_it(chat: Chat) -> None:
    """Pins the next turn's prompt: a client sending Mini-o3's call back as OpenAI
    tool_calls would have the template render a <tool_call> block with a `grounding`
    function the checkpoint never wrote; the assistant turn now carries the
    <grounding> text instead (DeepEyes' calls are <tool_call>s already and stay)."""
    tool = PROTOCOLS["mini_o3"].chat_tool
    assert tool is not None
    engine = chat.script([MINI_O3_TURN, "<think>red</think><answer>red</answer>"])
    first = chat.sdk.chat.completions.create(
        model="m",
        messages=messages(MINI_O3_SYSTEM),  # type: ignore[arg-type]
        tools=[tool()],  # type: ignore[list-item]
    )
    message = first.choices[0].message
    history = [
        *messages(MINI_O3_SYSTEM),
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": (message.tool_calls or [])[0].id, "content": "crop"},
    ]
    second = chat.sdk.chat.completions.create(
        model="m",
        messages=history,  # type: ignore[arg-type]
        tools=[tool()],  # type: ignore[list-item]
    )
    assert second.choices[0].finish_reason == "stop"
    sent = engine.requests[1].messages[2]
    assert sent["role"] == "assistant" and "tool_calls" not in sent
    assert sent["content"] == (
        '<think>Closer still.</think> <grounding>{"bbox_2d": [0.5, 0.5, 1, 1], '
        '"source": "observation_1"}</grounding>'
    )
