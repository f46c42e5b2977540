"""``/v1/chat/completions``: OpenAI requests to engine requests and back, with zoom tool
calls parsed from the model's text in either magsrl protocol form, or in the form of the
peer protocol whose tool the request declares (``peer_tools``), and SSE streaming."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from magsrl.common.errors import APIError, BadRequest, PayloadTooLarge, error_body
from magsrl.common.images import decode_b64, decode_image, open_header, oriented_size
from magsrl.engines.wire_images import EncodedImage, passthrough_mime
from magsrl.policy.config import PolicySettings
from magsrl.policy.peer_tools import PeerCallParser, PeerTools, peer_tools, written_back
from magsrl.policy.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCall,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    UsageInfo,
    completion_id,
)
from magsrl.policy.streaming import StreamingToolCallParser
from magsrl.zoom.engine import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
)
from magsrl.zoom.families import check_aspect
from magsrl.zoom.parsing import (
    ZoomCall,
    parse_turn,
    to_openai_tool_call,
    to_openai_tool_calls,
)
from magsrl.zoom.protocols import resolve_protocol

log = logging.getLogger("magsrl.policy.chat")
# Roles whose content may carry images: the user's, and a tool's (the zoom crops go back in
# tool messages). The Qwen-VL chat templates render no image in a system or assistant turn,
# so the processor then finds more images than image tokens and fails.
IMAGE_ROLES = frozenset({"user", "tool"})
# Qwen-VL processors refuse a more elongated image (transformers'
# models/qwen2_vl/image_processing_qwen2_vl.py, smart_resize: "absolute aspect ratio must be
# smaller than 200").


async def refresh_if_unknown(engine: Engine, model: str | None) -> None:
    """Asks the engine to look at its upstreams again when ``model`` is not among its
    models: policy replicas share their engines, and another replica may have loaded that
    adapter there. Unknown after that, the request gets its 404 as before."""
    if model not in (None, engine.base_model, *engine.model_names()):
        await engine.ready()


class ChatService:
    def __init__(self, engine: Engine, settings: PolicySettings) -> None:
        self.engine = engine
        self.settings = settings
        # An engine that forwards image bytes (the openai engine) gets the client's JPEG or
        # PNG as sent, checked from its header; others get decoded pixels.
        self.pass_bytes = bool(getattr(engine, "passes_image_bytes", False))
        self._images = ThreadPoolExecutor(settings.image_threads, thread_name_prefix="chat-images")

    # ---- request conversion ---------------------------------------------------------
    async def engine_request(self, req: ChatCompletionRequest) -> GenerationRequest:
        """``to_engine_request`` in the image threads: base64 and image decoding of a few
        megapixels take tens to hundreds of milliseconds, which on the event loop would
        stall every other request and stream of this process."""
        await refresh_if_unknown(self.engine, req.model)
        return await asyncio.get_running_loop().run_in_executor(
            self._images, self.to_engine_request, req
        )

    def to_engine_request(self, req: ChatCompletionRequest) -> GenerationRequest:
        """The engine request (blocking: decodes images; ``engine_request`` runs it off
        the loop)."""
        self.engine.check_model(req.model)
        tools = self._tools(req)
        peer = self.peer_tools(req)
        messages = [written_back(self._message(i, m), peer) for i, m in enumerate(req.messages)]
        n_images = sum(
            1
            for m in messages
            if isinstance(m.get("content"), list)
            for p in m["content"]
            if p.get("type") == "image"
        )
        if n_images > self.settings.max_images:
            raise BadRequest(
                f"{n_images} images in one request, over the limit of "
                f"{self.settings.max_images} (MAGSRL_MAX_IMAGES)",
                param="messages",
            )
        if peer is not None and not peer.forward_tools:
            tools = None
        sampling = SamplingParams(
            max_tokens=req.max_completion_tokens or req.max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if req.top_k is None else req.top_k,
            seed=req.seed,
            stop=tuple(req.stop_list()),
            n=req.n,
            logprobs=req.logprobs or req.return_token_ids,
            top_logprobs=req.top_logprobs or 0,
        )
        return GenerationRequest(messages=messages, sampling=sampling, tools=tools, model=req.model)

    def peer_tools(self, req: ChatCompletionRequest) -> PeerTools | None:
        """The peer protocol whose zoom tool the request declares, or None (magsrl's zoom,
        or no tools). Where several declare the name, the protocol this policy serves wins
        (its setting, or ``auto`` by the served model's or the request's model name)."""
        if not req.tools or req.tool_choice == "none":
            return None
        served = resolve_protocol(
            self.settings.zoom_protocol, [req.model, *self.engine.model_names()[:1]]
        )
        return peer_tools([t.function.name for t in req.tools], served)

    def _tools(self, req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
        if not req.tools and req.tool_choice not in (None, "none", "auto"):
            raise BadRequest(
                "tool_choice asks for a tool but no tools were given", param="tool_choice"
            )
        if not req.tools or req.tool_choice == "none":
            return None
        names = set()
        for i, tool in enumerate(req.tools):
            params = tool.function.parameters
            if params.get("type") != "object" or not isinstance(params.get("properties", {}), dict):
                raise BadRequest(
                    f"tools[{i}].function.parameters must be a JSON Schema object (type: object)",
                    param=f"tools[{i}].function.parameters",
                )
            if tool.function.name in names:
                raise BadRequest(
                    f"tool '{tool.function.name}' is defined twice",
                    param=f"tools[{i}].function.name",
                )
            names.add(tool.function.name)
        choice = req.tool_choice
        if choice is not None and not isinstance(choice, str) and choice.function.name not in names:
            raise BadRequest(
                f"tool_choice names '{choice.function.name}', which is not among the tools",
                param="tool_choice",
            )
        return [tool.model_dump(exclude_none=True) for tool in req.tools]

    def _message(self, index: int, message: ChatMessage) -> dict[str, Any]:
        role = "system" if message.role == "developer" else message.role
        out: dict[str, Any] = {"role": role}
        content = message.content
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for j, part in enumerate(content):
                if part.type == "text":
                    parts.append({"type": "text", "text": part.text})
                else:
                    param = f"messages[{index}].content[{j}].image_url.url"
                    if role not in IMAGE_ROLES:
                        raise BadRequest(
                            f"messages[{index}] is a {message.role} message with an image; "
                            "images go in user messages (or tool results)",
                            param=f"messages[{index}].content[{j}]",
                        )
                    parts.append(self._image(part.image_url.url, param))
            out["content"] = parts
        else:
            out["content"] = content or ""
        if message.tool_calls:
            out["tool_calls"] = [tc.model_dump() for tc in message.tool_calls]
        if message.tool_call_id:
            out["tool_call_id"] = message.tool_call_id
        return out

    def _image(self, url: str, param: str) -> dict[str, Any]:
        """An engine image part. To an engine that forwards bytes, a JPEG or PNG that the
        upstream reads as magsrl would (engines/wire_images.py) goes as sent, with only its
        header read here (size, orientation); anything else is decoded as before."""
        if not url.startswith("data:"):
            raise BadRequest(
                "images must be data URLs (data:image/png;base64,...); remote "
                "image URLs are not fetched by the policy",
                param=param,
            )
        data = decode_b64(url, param=param)
        if self.pass_bytes:
            probe = open_header(data, param=param)
            width, height = oriented_size(probe)
            mime = passthrough_mime(probe, data)
            if mime is not None:
                self._check_size(width, height, param)
                b64 = url.strip().partition(",")[2]
                # ``image``: the header-only image (pixels decode only if something asks).
                return {"type": "image", "image": probe, "source": EncodedImage(data, mime, b64)}
        image = decode_image(data, max_pixels=self.settings.max_image_pixels, param=param)
        check_aspect(image.width, image.height, param)
        return {"type": "image", "image": image}

    def _check_size(self, width: int, height: int, param: str) -> None:
        """decode_image's size checks, from the header alone."""
        if width <= 0 or height <= 0:
            raise BadRequest(f"the image has zero size ({width}x{height})", param=param)
        if width * height > self.settings.max_image_pixels:
            raise PayloadTooLarge(
                f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{self.settings.max_image_pixels}; downscale it first",
                param=param,
            )
        check_aspect(width, height, param)

    # ---- non-streaming --------------------------------------------------------------
    async def create(self, req: ChatCompletionRequest) -> ChatCompletionResponse:
        result = await self.engine.generate(await self.engine_request(req))
        choices = [self._choice(i, c, req) for i, c in enumerate(result.completions)]
        completion_tokens = sum(len(c.token_ids) for c in result.completions)
        return ChatCompletionResponse(
            model=req.model,
            choices=choices,
            usage=UsageInfo(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=result.prompt_tokens + completion_tokens,
            ),
            prompt_token_ids=result.prompt_token_ids if req.return_token_ids else None,
        )

    def _tool_calls(
        self, text: str, req: ChatCompletionRequest
    ) -> tuple[str | None, list[ToolCall]]:
        if not req.tools or req.tool_choice == "none":
            return text, []
        peer = self.peer_tools(req)
        if peer is not None:
            content, found = peer.parse(text)
            peer_calls = [
                ToolCall(id=c["id"], function=FunctionCall(**c["function"])) for c in found
            ]
            return (content or None) if peer_calls else text, peer_calls
        parsed = parse_turn(text)
        calls = [
            ToolCall(id=c["id"], function=FunctionCall(**c["function"]))
            for c in to_openai_tool_calls(parsed.zooms)
        ]
        return (parsed.content or None) if calls else text, calls

    def _choice(self, index: int, completion: Completion, req: ChatCompletionRequest) -> Choice:
        content, calls = self._tool_calls(completion.text, req)
        finish = "tool_calls" if calls else completion.finish_reason
        return Choice(
            index=index,
            message=AssistantMessage(content=content, tool_calls=calls or None),
            logprobs=_logprobs(completion) if req.logprobs else None,
            finish_reason=finish,
            token_ids=completion.token_ids if req.return_token_ids else None,
        )

    # ---- streaming ------------------------------------------------------------------
    async def stream(
        self, req: ChatCompletionRequest, engine_request: GenerationRequest | None = None
    ) -> AsyncIterator[str]:
        """The SSE events (``engine_request``: the request already converted, as the route
        does to answer bad input with a 4xx before the 200). Once the 200 has gone out, a
        failure can no longer change the status: it arrives as an error event, then
        ``[DONE]``, as vLLM does (vllm/entrypoints/openai/serving_chat.py,
        chat_completion_stream_generator), never as a cut connection."""
        try:
            async for piece in self._stream(req, engine_request):
                yield piece
        except APIError as exc:
            yield _error_event(exc.status_code, exc.message, exc.error_type, exc.param)
            yield "data: [DONE]\n\n"
        except Exception as exc:
            log.exception("streaming failed: %s", exc)
            yield _error_event(
                500, "internal error; the server log has details under this request id"
            )
            yield "data: [DONE]\n\n"

    async def _stream(
        self, req: ChatCompletionRequest, engine_request: GenerationRequest | None
    ) -> AsyncIterator[str]:
        engine_request = engine_request or await self.engine_request(req)
        cid, created = completion_id(), int(time.time())
        with_tools = bool(req.tools) and req.tool_choice != "none"
        peer = self.peer_tools(req)
        parsers: list[Any] = [
            StreamingToolCallParser() if peer is None else PeerCallParser(peer)
            for _ in range(req.n)
        ]
        counts = [[0, 0] for _ in range(req.n)]

        def chunk(choices: list[ChunkChoice], usage: UsageInfo | None = None) -> str:
            body = ChatCompletionChunk(
                id=cid, created=created, model=req.model, choices=choices, usage=usage
            )
            return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

        yield chunk(
            [ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(req.n)]
        )
        result: GenerationResult | None = None
        async for item in self.engine.stream(engine_request):
            if isinstance(item, GenerationResult):
                result = item
                break
            for piece in self._stream_delta(item, with_tools, parsers, counts, chunk):
                yield piece
        assert result is not None
        for i, completion in enumerate(result.completions):
            for piece in self._finish_choice(
                i, completion, with_tools, parsers[i], counts, req, chunk
            ):
                yield piece
        if req.stream_options and req.stream_options.include_usage:
            completion_tokens = sum(len(c.token_ids) for c in result.completions)
            yield chunk(
                [],
                UsageInfo(
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=completion_tokens,
                    total_tokens=result.prompt_tokens + completion_tokens,
                ),
            )
        yield "data: [DONE]\n\n"

    def _stream_delta(
        self,
        item: StreamDelta,
        with_tools: bool,
        parsers: list[Any],
        counts: list[list[int]],
        chunk: Any,
    ) -> list[str]:
        if not item.text:
            return []
        if not with_tools:
            return [chunk([ChunkChoice(index=item.index, delta=Delta(content=item.text))])]
        pieces = [
            self._event_chunk(item.index, event, counts, chunk)
            for event in parsers[item.index].feed(item.text)
        ]
        return [p for p in pieces if p is not None]

    def _event_chunk(
        self, index: int, event: Any, counts: list[list[int]], chunk: Any
    ) -> str | None:
        """counts[index] = [ZoomCall events seen, tool calls emitted]: ids number every call
        (as the one-shot parse does), delta indices only the emitted ones. A peer's calls
        arrive as OpenAI tool calls already (``PeerCallParser``)."""
        if isinstance(event, dict):
            delta = ToolCallDelta(
                index=counts[index][1],
                id=event["id"],
                type="function",
                function=FunctionCall(**event["function"]),
            )
            counts[index][1] += 1
            return chunk([ChunkChoice(index=index, delta=Delta(tool_calls=[delta]))])
        if not isinstance(event, ZoomCall):
            return chunk([ChunkChoice(index=index, delta=Delta(content=event.text))])
        seen, emitted = counts[index]
        counts[index][0] += 1
        if not event.usable:
            # Dropped, as the one-shot path drops it: a tag zoom's text already went out as
            # content, and a broken <tool_call> block is not content.
            return None
        call = to_openai_tool_call(event, seen)
        delta = ToolCallDelta(
            index=emitted, id=call["id"], type="function", function=FunctionCall(**call["function"])
        )
        counts[index][1] += 1
        return chunk([ChunkChoice(index=index, delta=Delta(tool_calls=[delta]))])

    def _finish_choice(
        self,
        index: int,
        completion: Completion,
        with_tools: bool,
        parser: Any,
        counts: list[list[int]],
        req: ChatCompletionRequest,
        chunk: Any,
    ) -> list[str]:
        out: list[str] = []
        if with_tools:
            pieces = [self._event_chunk(index, event, counts, chunk) for event in parser.finish()]
            out += [p for p in pieces if p is not None]
        finish = "tool_calls" if counts[index][1] else completion.finish_reason
        out.append(
            chunk(
                [
                    ChunkChoice(
                        index=index,
                        delta=Delta(),
                        logprobs=_logprobs(completion) if req.logprobs else None,
                        finish_reason=finish,
                        token_ids=completion.token_ids if req.return_token_ids else None,
                    )
                ]
            )
        )
        return out


def _error_event(
    status: int, message: str, error_type: str | None = None, param: str | None = None
) -> str:
    body = error_body(status, message, error_type=error_type, param=param)
    return f"data: {json.dumps(body)}\n\n"


def _logprobs(completion: Completion) -> ChoiceLogprobs | None:
    if completion.logprobs is None:
        return None
    tokens = completion.tokens or [""] * len(completion.logprobs)
    tops = completion.top_logprobs or [[] for _ in completion.logprobs]
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=tok,
                logprob=lp,
                bytes=list(tok.encode()),
                top_logprobs=[
                    TopLogprob(token=t, logprob=v, bytes=list(t.encode())) for t, v in top
                ],
            )
            for tok, lp, top in zip(tokens, completion.logprobs, tops, strict=True)
        ]
    )
