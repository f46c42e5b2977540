"""Chat serving in-process: ``ChatService`` against a scripted engine that returns fixed text,
so the conversion OpenAI request -> engine request -> OpenAI response (tool calls parsed
from the text, finish reasons, logprobs, SSE chunks) is checked in milliseconds, with no
model and no server. The real-server tests with the official client stay in
test_policy_api.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from magsrl.common.errors import BadRequest, NotFound
from magsrl.policy.config import PolicySettings
from magsrl.policy.protocol import ChatCompletionRequest
from magsrl.policy.serving_chat import ChatService
from magsrl.proto.tools import zoom_tool
from magsrl.zoom.engine import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
from magsrl.zoom.families import QWEN2_5_VL

TOOL_TEXT = (
    'Let me look closer.<tool_call>\n{"name": "zoom", "arguments": '
    '{"bbox_2d": [10, 20, 110, 220], "label": "sign"}}\n</tool_call>'
)


class ScriptedEngine(Engine):
    """Answers every request with the next scripted text and records what it was asked."""

    base_model = "scripted"
    family = QWEN2_5_VL

    def __init__(self, texts: list[str], adapters: tuple[str, ...] = ()) -> None:
        self.texts = texts
        self.adapters = list(adapters)
        self.requests: list[GenerationRequest] = []

    def _result(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        completions = []
        for _ in range(request.sampling.n):
            text = self.texts.pop(0)
            ids = list(range(len(text.split())))
            completions.append(
                Completion(
                    text=text,
                    token_ids=ids,
                    finish_reason="stop",
                    logprobs=[-0.5] * len(ids) if request.sampling.logprobs else None,
                    tokens=text.split() if request.sampling.logprobs else None,
                )
            )
        return GenerationResult(completions, [1, 2, 3], 3, 0.1, request.model or "scripted")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return self._result(request)

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        result = self._result(request)
        for i, completion in enumerate(result.completions):
            text = completion.text
            for start in range(0, len(text), 7):  # small pieces split the tags mid-way
                yield StreamDelta(index=i, text=text[start : start + 7])
        yield result

    def model_names(self) -> list[str]:
        return [self.base_model, *self.adapters]

    async def load_adapter(self, name: str, path: str) -> None:
        self.adapters.append(name)

    async def unload_adapter(self, name: str) -> None:
        self.adapters.remove(name)

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        return width, height


def _data_url(size: tuple[int, int] = (32, 24)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _request(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "scripted",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _data_url()}},
                    {"type": "text", "text": "What does the sign say?"},
                ],
            }
        ],
    }
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def _service(texts: list[str], **settings: Any) -> tuple[ChatService, ScriptedEngine]:
    engine = ScriptedEngine(texts)
    return ChatService(engine, PolicySettings(**settings)), engine


def test_tool_call_text_becomes_openai_tool_calls() -> None:
    """Pins: a Hermes <tool_call> in the model's text returned as plain content (or with
    finish_reason "stop"), which an OpenAI client would never execute."""
    service, engine = _service([TOOL_TEXT])
    response = asyncio.run(service.create(_request(tools=[zoom_tool()])))
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look closer."
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "zoom"
    assert json.loads(call.function.arguments)["bbox_2d"] == [10, 20, 110, 220]
    # The image reached the engine decoded, and the tool schema went with it.
    parts = engine.requests[0].messages[0]["content"]
    assert isinstance(parts[0]["image"], Image.Image)
    assert engine.requests[0].tools and engine.requests[0].tools[0]["function"]["name"] == "zoom"


def test_without_tools_the_text_stays_content() -> None:
    """Pins: tool calls parsed out of a reply whose request offered no tools."""
    service, _ = _service([TOOL_TEXT])
    choice = asyncio.run(service.create(_request())).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == TOOL_TEXT
    assert choice.message.tool_calls is None


def test_sampling_n_logprobs_and_usage() -> None:
    """Pins: n choices collapsed into one, logprobs dropped, or usage miscounted."""
    service, engine = _service(["a b", "c d e"])
    response = asyncio.run(
        service.create(_request(n=2, logprobs=True, temperature=0, max_tokens=5, seed=3))
    )
    sampling = engine.requests[0].sampling
    assert (sampling.n, sampling.temperature, sampling.max_tokens, sampling.seed) == (2, 0, 5, 3)
    assert [len(c.logprobs.content or []) for c in response.choices if c.logprobs] == [2, 3]
    assert response.usage.completion_tokens == 5
    assert response.usage.total_tokens == 8


def test_stream_gives_the_same_tool_call_as_the_one_shot_reply() -> None:
    """Pins: streamed tool calls with other ids or boxes than the non-streamed reply (a
    client resuming from either would then disagree), or a stream without [DONE]."""
    service, _ = _service([TOOL_TEXT, TOOL_TEXT])
    one_shot = asyncio.run(service.create(_request(tools=[zoom_tool()]))).choices[0]

    async def collect() -> list[str]:
        return [piece async for piece in service.stream(_request(tools=[zoom_tool()]))]

    pieces = asyncio.run(collect())
    assert pieces[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(p.removeprefix("data: ")) for p in pieces[:-1]]
    calls = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    assert one_shot.message.tool_calls is not None
    assert calls[0]["id"] == one_shot.message.tool_calls[0].id
    assert calls[0]["function"]["arguments"] == one_shot.message.tool_calls[0].function.arguments
    content = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert content.strip() == "Let me look closer."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        pytest.param({"model": "nope"}, NotFound, "model", id="unknown-model"),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ]
            },
            BadRequest,
            "messages[0].content[0].image_url.url",
            id="remote-image-url",
        ),
        pytest.param(
            {"tool_choice": "required"}, BadRequest, "tool_choice", id="tool-choice-without-tools"
        ),
        pytest.param(
            {"tools": [zoom_tool(), zoom_tool()]}, BadRequest, "tools[1].function.name", id="dup"
        ),
    ],
)
def test_bad_requests_name_the_field(
    fields: dict[str, Any], error: type[Exception], param: str
) -> None:
    """Pins: a client mistake surfacing as a 500 (an unhandled exception) or without the
    field that caused it."""
    service, engine = _service(["unused"])
    with pytest.raises(error) as info:
        asyncio.run(service.create(_request(**fields)))
    assert getattr(info.value, "param", None) == param
    assert not engine.requests  # refused before any generation


def test_image_count_limit() -> None:
    """Pins: MAGSRL_MAX_IMAGES not enforced, letting one request flood the engine."""
    service, _ = _service(["unused"], max_images=1)
    message = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": _data_url()}}] * 2,
    }
    with pytest.raises(BadRequest, match="over the limit of 1"):
        asyncio.run(service.create(_request(messages=[message])))


def test_an_adapter_is_addressable_by_name() -> None:
    """Pins: requests for a loaded adapter refused, or sent to the base model."""
    service, engine = _service(["ok"])
    engine.adapters.append("run-v1")
    response = asyncio.run(service.create(_request(model="run-v1")))
    assert engine.requests[0].model == "run-v1"
    assert response.model == "run-v1"
