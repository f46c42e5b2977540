"""Stand-ins for in-process tests of the zoom core, the rollout worker and the run loop: a
scripted engine (``magsrl.zoom.engine.Engine``), a magnifier that really crops (PIL, no SR),
and a scripted OpenAI-compatible policy behind ``httpx.MockTransport``. Everything else the
tests touch is the real code."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from magsrl.common.images import decode_image, encode_image, sha256_hex
from magsrl.proto.episode import ServedOptions
from magsrl.proto.images import ImageInfo
from magsrl.proto.magnifier import Crop, ZoomResponse
from magsrl.proto.policy import PolicyInfo
from magsrl.zoom.engine import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
from magsrl.zoom.families import ModelFamily, resized_size

EOS = 99  # the scripted end-of-turn token id


class ScriptedEngine(Engine):
    """Says the scripted replies in order, one per round, and records every request."""

    def __init__(self, replies: Sequence[str], family: ModelFamily, base_model: str = "m"):
        self.replies = list(replies)
        self.family = family
        self.base_model = base_model
        self.requests: list[GenerationRequest] = []
        self._adapters: list[str] = []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        text = self.replies.pop(0)
        return GenerationResult(
            completions=[Completion(text=text, token_ids=[1, 2, EOS], finish_reason="stop")],
            prompt_token_ids=None,
            prompt_tokens=10,
            engine_ms=0.0,
            model=request.model or self.base_model,
        )

    async def stream(  # type: ignore[override]
        self, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        result = await self.generate(request)
        yield StreamDelta(index=0, text=result.completions[0].text)
        yield result

    def model_names(self) -> list[str]:
        return [self.base_model, *self._adapters]

    async def load_adapter(self, name: str, path: str) -> None:
        self._adapters.append(name)

    async def unload_adapter(self, name: str) -> None:
        self._adapters.remove(name)

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        return resized_size(width, height, self.family)


@dataclass
class ZoomCall:
    image_id: str
    boxes: list[list[float]]
    method: str
    max_pixels: int | None
    fmt: str


class FakeMagnifier:
    """Stores uploads as the real magnifier does (decoded, EXIF-oriented) and crops boxes
    with plain PIL. ``get_image`` hands back the bytes as uploaded, so a consumer that
    decodes them must orient them itself."""

    def __init__(self) -> None:
        self.raw: dict[str, bytes] = {}
        self.images: dict[str, Image.Image] = {}
        self.calls: list[ZoomCall] = []
        self.base_url = "http://magnifier.test"

    async def upload(self, data: bytes) -> ImageInfo:
        image_id = sha256_hex(data)
        image = decode_image(data, max_pixels=64_000_000)
        self.raw[image_id], self.images[image_id] = data, image
        return ImageInfo(image_id=image_id, width=image.width, height=image.height)

    async def get_image(self, image_id: str) -> bytes | None:
        return self.raw.get(image_id)

    async def zoom(
        self,
        image_id: str,
        boxes: Sequence[Sequence[float]],
        *,
        coords: str = "pixel",
        method: str = "sr",
        max_pixels: int | None = None,
        fmt: str = "png",
        quality: int = 90,
    ) -> ZoomResponse:
        assert coords == "pixel"
        self.calls.append(ZoomCall(image_id, [list(b) for b in boxes], method, max_pixels, fmt))
        image = self.images[image_id]
        crops = []
        for box in boxes:
            x1, y1, x2, y2 = (int(v) for v in box)
            crop = image.crop((x1, y1, x2, y2))
            crops.append(
                Crop(
                    box=[x1, y1, x2, y2],
                    width=crop.width,
                    height=crop.height,
                    method=method,  # type: ignore[arg-type]
                    model=None,
                    scale=1.0,
                    format="png",
                    b64=base64.b64encode(encode_image(crop, "png")).decode(),
                )
            )
        return ZoomResponse(image_id=image_id, crops=crops, timing_ms={"total": 0.0})

    async def close(self) -> None:
        return None


@dataclass
class FakePolicy:
    """A policy service as the worker and the run loop see it: ``/v1/policy/info``,
    ``/v1/models`` (with the family extension), ``/v1/adapters`` and
    ``/v1/chat/completions``, which says the scripted replies in order (then ``default``),
    with token ids and log-probs that extend round by round as a real template's would."""

    model: str
    family: str
    replies: list[str]
    served: ServedOptions = field(default_factory=ServedOptions)
    default: str = "<answer>red</answer>"
    by_seed: list[str] = field(default_factory=list)  # reply by the request's seed, when set
    chats: list[dict[str, Any]] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    adapter_log: list[str] = field(default_factory=list)  # "+name" loads, "-name" unloads

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport())

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/policy/info":
            info = PolicyInfo(
                model=self.model, family=self.family, convention=None, served=self.served
            )
            return httpx.Response(200, json=info.model_dump(mode="json"))
        if path == "/v1/models":
            names = [self.model, *self.adapters]
            cards = [
                {
                    "id": n,
                    "root": self.model,
                    "family": self.family,
                    "logprobs_mode": "processed_logprobs",
                }
                for n in names
            ]
            return httpx.Response(200, json={"data": cards})
        if path == "/v1/adapters" and request.method == "POST":
            name = json.loads(request.content)["name"]
            if name in self.adapters:  # as the policy does
                message = f"a model named '{name}' is already loaded; unload it first"
                return httpx.Response(400, json={"error": {"type": "bad", "message": message}})
            self.adapters.append(name)
            self.adapter_log.append(f"+{name}")
            return httpx.Response(200, json={"status": "loaded", "name": name})
        if path.startswith("/v1/adapters/") and request.method == "DELETE":
            name = path.rsplit("/", 1)[1]
            if name not in self.adapters:
                return httpx.Response(404, json={"error": {"type": "not_found", "message": name}})
            self.adapters.remove(name)
            self.adapter_log.append(f"-{name}")
            return httpx.Response(200, json={"status": "unloaded", "name": name})
        if path == "/v1/chat/completions":
            return self._chat(json.loads(request.content))
        return httpx.Response(404, json={"error": {"type": "not_found", "message": path}})

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        self.chats.append(body)
        if body["model"] not in (self.model, *self.adapters):
            message = f"the model '{body['model']}' does not exist"
            return httpx.Response(404, json={"error": {"type": "not_found", "message": message}})
        text = self.replies.pop(0) if self.replies else self.default
        if self.by_seed and body.get("seed") is not None:
            text = self.by_seed[body["seed"] % len(self.by_seed)]
        # Turn k's prompt is the earlier turns' prompt, their sampled ids and observations.
        turns = sum(1 for m in body["messages"] if m["role"] == "assistant")
        prompt = [5, 6, 7]
        for i in range(turns):
            prompt += [21 + i, EOS, 31 + i]
        ids = [21 + turns, EOS]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "token_ids": ids,
            "logprobs": {"content": [{"token": "t", "logprob": -0.5} for _ in ids]},
        }
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(ids)}
        return httpx.Response(
            200, json={"choices": [choice], "prompt_token_ids": prompt, "usage": usage}
        )


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    """``image`` stored sideways with an EXIF tag that tells viewers to turn it back: a
    phone photo. Decoded with EXIF applied, it is ``image`` again."""
    transpose = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    stored = image.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()
