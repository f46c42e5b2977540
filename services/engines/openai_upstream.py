"""The ``openai`` engine: an upstream OpenAI-compatible server (the vLLM container in
production, or another magsrl policy). Images travel as data URLs; LoRA adapters load at
runtime through vLLM's ``/v1/load_lora_adapter``; sampled token ids come from vLLM's
``return_token_ids`` when the upstream offers them."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from PIL import Image

from magsrl.common.errors import APIError, ServiceUnavailable
from magsrl.common.images import to_b64
from magsrl.engines.sampled_text import sampled_text
from magsrl.policy.config import PolicySettings
from magsrl.policy.limits import upstream_disagreement
from magsrl.zoom.engine import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
    UnknownModel,
)
from magsrl.zoom.families import FAMILIES, ModelFamily, resized_size


class UpstreamError(APIError):
    """A 4xx from the upstream, passed on with its status and message."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status_code = status


def guess_family(model: str) -> ModelFamily:
    return FAMILIES["qwen3_vl"] if "qwen3" in model.lower() else FAMILIES["qwen2_5_vl"]


class OpenAIEngine(Engine):
    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.base_model = settings.served_model_name or settings.policy_model
        self.upstream_model = settings.policy_model
        self.family = guess_family(settings.policy_model)
        headers = {}
        if settings.upstream_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        self.base_url = settings.upstream_url.rstrip("/")
        self.http = httpx.AsyncClient(timeout=settings.upstream_timeout_s, headers=headers)
        self._adapters: list[str] = []

    async def close(self) -> None:
        await self.http.aclose()

    async def ready(self) -> str | None:
        try:
            resp = await self.http.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            return f"upstream {self.base_url} unreachable ({exc.__class__.__name__})"
        if resp.status_code != 200:
            return f"upstream {self.base_url}/models answered {resp.status_code}"
        names = [m.get("id") for m in resp.json().get("data", [])]
        if self.upstream_model not in names:
            return f"upstream does not serve '{self.upstream_model}' (it has {names})"
        self._adapters = [n for n in names if n != self.upstream_model]
        # Limits shared with the engine: refuse to serve when they disagree.
        return upstream_disagreement(resp.json(), self.upstream_model, self.settings)

    def model_names(self) -> list[str]:
        return [self.base_model, *self._adapters]

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        # Must mirror the upstream's processor budget (vLLM --mm-processor-kwargs); the
        # family's defaults otherwise.
        return resized_size(
            width,
            height,
            self.family,
            min_pixels=self.settings.min_image_pixels,
            max_pixels=self.settings.max_image_pixels_model,
        )

    # ---- adapters -------------------------------------------------------------------
    def _root(self) -> str:
        # vLLM serves its LoRA endpoints next to /v1/chat/completions.
        return self.base_url

    async def load_adapter(self, name: str, path: str) -> None:
        resp = await self._post("/load_lora_adapter", {"lora_name": name, "lora_path": path})
        self._raise_for(resp)
        if name not in self._adapters:
            self._adapters.append(name)

    async def unload_adapter(self, name: str) -> None:
        self.check_model(name)
        resp = await self._post("/unload_lora_adapter", {"lora_name": name})
        self._raise_for(resp)
        self._adapters.remove(name)

    # ---- generation -----------------------------------------------------------------
    def _payload(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        adapter = self.check_model(request.model)
        s = request.sampling
        payload: dict[str, Any] = {
            "model": adapter or self.upstream_model,
            "messages": [_wire_message(m) for m in request.messages],
            "n": s.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "logprobs": s.logprobs,
            "return_token_ids": True,
            "stream": stream,
        }
        if s.top_k > 0:
            payload["top_k"] = s.top_k
        if s.max_tokens is not None:
            payload["max_tokens"] = s.max_tokens
        if s.seed is not None:
            payload["seed"] = s.seed
        if s.stop:
            payload["stop"] = list(s.stop)
        if s.logprobs and s.top_logprobs:
            payload["top_logprobs"] = s.top_logprobs
        if request.tools:
            payload["tools"] = request.tools
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        resp = await self._post("/chat/completions", self._payload(request, stream=False))
        self._raise_for(resp)
        body = resp.json()
        completions = [_completion(choice) for choice in body["choices"]]
        usage = body.get("usage") or {}
        return GenerationResult(
            completions=completions,
            prompt_token_ids=body.get("prompt_token_ids"),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            engine_ms=(time.perf_counter() - started) * 1000,
            model=request.model or self.base_model,
        )

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        started = time.perf_counter()
        payload = self._payload(request, stream=True)
        texts: dict[int, str] = {}
        calls: dict[int, dict[int, dict[str, Any]]] = {}
        ids: dict[int, list[int]] = {}
        finish: dict[int, str] = {}
        usage: dict[str, Any] = {}
        try:
            async with self.http.stream(
                "POST", f"{self.base_url}/chat/completions", json=payload
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    self._raise_for(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: ") :])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        i = choice["index"]
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        texts[i] = texts.get(i, "") + text
                        for tc in delta.get("tool_calls") or []:
                            slot = calls.setdefault(i, {}).setdefault(tc["index"], {})
                            fn = tc.get("function") or {}
                            slot["name"] = slot.get("name", "") + (fn.get("name") or "")
                            slot["arguments"] = slot.get("arguments", "") + (
                                fn.get("arguments") or ""
                            )
                        ids.setdefault(i, []).extend(choice.get("token_ids") or [])
                        if choice.get("finish_reason"):
                            finish[i] = choice["finish_reason"]
                        if text:
                            yield StreamDelta(index=i, text=text)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"upstream {self.base_url} failed mid-stream: {exc}") from exc
        completions = []
        for i in sorted(texts):
            raw = texts[i] + "".join(
                _tool_call_text(c["name"], c["arguments"])
                for _, c in sorted(calls.get(i, {}).items())
            )
            completions.append(
                Completion(text=raw, token_ids=ids.get(i, []), finish_reason=_finish(finish.get(i)))
            )
        yield GenerationResult(
            completions=completions,
            prompt_token_ids=None,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            engine_ms=(time.perf_counter() - started) * 1000,
            model=request.model or self.base_model,
        )

    # ---- plumbing -------------------------------------------------------------------
    async def _post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            return await self.http.post(f"{self.base_url}{path}", json=payload)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"upstream {self.base_url} is unreachable ({exc.__class__.__name__}: {exc})"
            ) from exc

    def _raise_for(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            error = resp.json().get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            param = error.get("param") if isinstance(error, dict) else None
        except ValueError:
            message, param = resp.text[:500], None
        message = f"upstream: {message}"
        if resp.status_code == 404:
            raise UnknownModel(message, param=param or "model")
        if resp.status_code >= 500:
            raise ServiceUnavailable(message)
        raise UpstreamError(resp.status_code, message, param=param)


def _wire_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    out = dict(message)
    if isinstance(content, list):
        out["content"] = [
            {"type": "image_url", "image_url": {"url": _data_url(p["image"])}}
            if p.get("type") == "image"
            else p
            for p in content
        ]
    return out


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")  # lossless: the upstream decodes and resizes it anyway
    return "data:image/png;base64," + to_b64(buf.getvalue())


def _tool_call_text(name: str, arguments: str | dict[str, Any]) -> str:
    # Rebuild the Hermes text the model wrote, so both engines hand the loop the same thing.
    args = json.loads(arguments) if isinstance(arguments, str) and arguments else arguments
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args or {}})}\n</tool_call>"


def _finish(reason: str | None) -> Any:
    return "length" if reason == "length" else "stop"


def _completion(choice: dict[str, Any]) -> Completion:
    message = choice.get("message") or {}
    text = (message.get("content") or "") + "".join(
        _tool_call_text(tc["function"]["name"], tc["function"].get("arguments") or "{}")
        for tc in message.get("tool_calls") or []
    )
    if message.get("tool_calls"):  # the turn as sampled, not rebuilt (sampled_text.py)
        text = sampled_text(choice) or text
    logprobs = None
    tokens = None
    content = (choice.get("logprobs") or {}).get("content")
    if content:
        logprobs = [float(t["logprob"]) for t in content]
        tokens = [t["token"] for t in content]
    return Completion(
        text=text,
        token_ids=list(choice.get("token_ids") or []),
        finish_reason=_finish(choice.get("finish_reason")),
        logprobs=logprobs,
        tokens=tokens,
    )
