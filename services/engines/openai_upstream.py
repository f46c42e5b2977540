"""The ``openai`` engine: an upstream OpenAI-compatible server (the vLLM container in
production, or another magsrl policy). Images travel as data URLs; LoRA adapters load at
runtime through vLLM's ``/v1/load_lora_adapter``; sampled token ids come from vLLM's
``return_token_ids`` when the upstream offers them.

The model family (and so the box convention) is learned from the upstream once, never
guessed from a name: a magsrl policy reports it on its model card (the ``family``
extension); vLLM's card gives ``root``, the path it loaded (vllm/entrypoints/openai/
protocol.py, ``ModelCard.root``), whose ``config.json`` names the ``model_type`` when that
folder, or the Hub cache's copy of that repo id, is readable here; otherwise
``MAGSRL_POLICY_FAMILY`` must say it, and until then ``/ready`` names what is missing.

vLLM's semantics it relies on (pinned against tests/fakes/vllm_server.py, docs/policy.md):
the log-probs mode is checked at start (engines/logprobs_mode.py); a turn the hermes parser
split into content and calls is rebuilt from its token ids (engines/upstream_text.py);
a stream's first chunk carries ``prompt_token_ids``, every chunk its ``token_ids``."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from PIL import Image

from magsrl.common.errors import (
    Conflict,
    InvalidInput,
    MagsrlError,
    ResourceExhausted,
    ServiceUnavailable,
    TooLarge,
    UnprocessableEntity,
    UpstreamError,
)
from magsrl.common.images import to_b64
from magsrl.engines.logprobs_mode import observed_mode
from magsrl.engines.settings import EngineSettings
from magsrl.engines.upstream_limits import upstream_disagreement
from magsrl.engines.upstream_text import rebuilt_text, sampled_text, text_from_logprob_bytes
from magsrl.models.hub import model_config_file
from magsrl.zoom.engine import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
    UnknownModel,
)
from magsrl.zoom.families import ModelFamily, family_for_config, get_family, resized_size

# An upstream 4xx answers the caller's request as we forwarded it, so it is the caller's
# fault and keeps its kind; anything unlisted is plain invalid input.
_REFUSALS: dict[int, type[MagsrlError]] = {
    409: Conflict,
    413: TooLarge,
    422: UnprocessableEntity,
    429: ResourceExhausted,  # the upstream is saturated: not the caller's fault
}


def upstream_refusal(status: int, message: str, param: str | None) -> MagsrlError:
    """The error an upstream 4xx becomes here."""
    if status in (401, 403):
        # Our credentials, not the caller's: the operator must fix MAGSRL_UPSTREAM_API_KEY.
        return ServiceUnavailable(f"the upstream refused the policy's credentials: {message}")
    if status == 404:
        return UnknownModel(message, param=param or "model")
    return _REFUSALS.get(status, InvalidInput)(message, param=param)


FAMILY_FIELD = "family"  # magsrl's extension on a model card


def family_from_card(card: dict[str, Any], fallback: str | None) -> ModelFamily:
    """The family of the model a ``/v1/models`` card describes: the card's own ``family``
    (a magsrl policy), the ``model_type`` in ``config.json`` of its ``root`` folder (vLLM,
    when the folder is readable here), or ``fallback`` (the ``policy_family`` setting).
    Raises ValueError saying how to fix it when none applies."""
    if card.get(FAMILY_FIELD):
        return get_family(str(card[FAMILY_FIELD]))
    root = card.get("root")
    config = model_config_file(str(root)) if root else None
    if config is not None:
        return family_for_config(json.loads(config.read_text(encoding="utf-8")))
    if fallback:
        return get_family(fallback)
    raise ValueError(
        f"cannot learn the family of the upstream model {card.get('id')!r}: its model card "
        f"has no '{FAMILY_FIELD}', and its root {root!r} is neither a model folder nor in "
        "the Hugging Face cache here (HF_HOME); mount that cache, or set "
        "MAGSRL_POLICY_FAMILY to qwen2_5_vl or qwen3_vl"
    )


class OpenAIEngine(Engine):
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.base_model = settings.served_model_name or settings.policy_model
        self.upstream_model = settings.policy_model
        self.logprobs_mode = settings.upstream_logprobs_mode
        self._family: ModelFamily | None = None
        self._family_problem = "the model family is not known yet (upstream not asked)"
        headers = {}
        if settings.upstream_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        self.base_url = settings.upstream_url.rstrip("/")
        self.http = httpx.AsyncClient(timeout=settings.upstream_timeout_s, headers=headers)
        self._adapters: list[str] = []
        self._mode_checked = False
        self._detokenize = True  # until the upstream shows it has no /detokenize

    async def start(self) -> None:
        # Learn the family (and the adapters) once now; /ready retries while the upstream
        # is still starting.
        await self.ready()

    async def close(self) -> None:
        await self.http.aclose()

    async def ready(self) -> str | None:
        try:
            resp = await self.http.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            return f"upstream {self.base_url} unreachable ({exc.__class__.__name__})"
        if resp.status_code != 200:
            return f"upstream {self.base_url}/models answered {resp.status_code}"
        try:
            cards = [m for m in resp.json().get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError, TypeError):
            return f"upstream {self.base_url}/models answered something that is not a model list"
        names = [m.get("id") for m in cards]
        if self.upstream_model not in names:
            return f"upstream does not serve '{self.upstream_model}' (it has {names})"
        self._adapters = [n for n in names if n != self.upstream_model]
        card = cards[names.index(self.upstream_model)]
        if self._family is None:
            try:
                self._family = family_from_card(card, self.settings.family)
            except ValueError as exc:
                self._family_problem = str(exc)
                return self._family_problem
        # Limits shared with the engine: refuse to serve when they disagree.
        disagreement = upstream_disagreement(cards, self.upstream_model, self.settings.max_context)
        if disagreement is not None:
            return disagreement
        return await self._check_logprobs_mode(card)

    async def _check_logprobs_mode(self, card: dict[str, Any]) -> str | None:
        """None when the upstream reports the log-probs mode the settings expect (or the
        probe cannot tell); otherwise why the policy must not serve training. A magsrl
        policy says its mode on its model card; vLLM says nothing, so it is probed."""
        if self._mode_checked:
            return None
        expected = self.settings.upstream_logprobs_mode
        if card.get("logprobs_mode"):
            mode, why = str(card["logprobs_mode"]), "its model card says so"
            if mode != expected:
                return (
                    f"the upstream reports {mode} ({why}), but MAGSRL_UPSTREAM_LOGPROBS_MODE "
                    f"is {expected}"
                )
            self._mode_checked = True
            return None

        async def post(payload: dict[str, Any]) -> dict[str, Any] | None:
            try:
                resp = await self._post("/chat/completions", payload)
                return resp.json() if resp.status_code == 200 else None
            except (ServiceUnavailable, ValueError):
                return None

        mode, why = await observed_mode(post, self.upstream_model)
        if mode is not None and mode != expected:
            return (
                f"the upstream reports {mode} ({why}), but MAGSRL_UPSTREAM_LOGPROBS_MODE is "
                f"{expected}: start vLLM with --logprobs-mode {expected}"
            )
        self._mode_checked = True
        return None

    @property
    def family(self) -> ModelFamily:  # type: ignore[override]
        """Learned from the upstream by ``ready``; a 503 until then."""
        if self._family is None:
            raise ServiceUnavailable(self._family_problem)
        return self._family

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
        if resp.status_code >= 400:
            _raise_lora_error(resp, path)
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
        try:
            body = resp.json()
            choices = body["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("'choices' is empty or not a list")
            completions = [_completion(choice) for choice in choices]
            usage = body.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"upstream {self.base_url} answered something that is not an OpenAI chat "
                f"completion ({exc.__class__.__name__}: {str(exc)[:200]})"
            ) from exc
        for choice, completion in zip(choices, completions, strict=True):
            if (choice.get("message") or {}).get("tool_calls"):
                completion.text = await self._sampled_text(
                    completion, choice.get("stop_reason"), request
                )
        return GenerationResult(
            completions=completions,
            prompt_token_ids=body.get("prompt_token_ids"),
            prompt_tokens=prompt_tokens,
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
        stop_reasons: dict[int, Any] = {}
        logprobs: dict[int, list[dict[str, Any]]] = {}
        usage: dict[str, Any] = {}
        prompt_ids: list[int] | None = None
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
                    chunk = _stream_chunk(line[len("data: ") :], self.base_url)
                    usage = chunk.get("usage") or usage
                    # vLLM sends the prompt's ids once, on the first chunk of each choice.
                    prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
                    for choice in chunk.get("choices") or []:
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
                        logprobs.setdefault(i, []).extend(
                            (choice.get("logprobs") or {}).get("content") or []
                        )
                        if choice.get("finish_reason"):
                            finish[i] = choice["finish_reason"]
                            stop_reasons[i] = choice.get("stop_reason")
                        if text:
                            yield StreamDelta(index=i, text=text)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"upstream {self.base_url} failed mid-stream: {exc}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"upstream {self.base_url} streamed a malformed chunk "
                f"({exc.__class__.__name__}: {str(exc)[:200]})"
            ) from exc
        if not texts:
            raise UpstreamError(f"upstream {self.base_url} streamed no choices")
        completions = []
        for i in sorted(texts):
            completion = _completion(
                {
                    "message": {"content": texts[i]},
                    "token_ids": ids.get(i, []),
                    "finish_reason": finish.get(i),
                    "logprobs": {"content": logprobs.get(i)},
                }
            )
            if calls.get(i):
                parsed = [(c["name"], c["arguments"]) for _, c in sorted(calls[i].items())]
                completion.text = rebuilt_text(texts[i], parsed)
                completion.text = await self._sampled_text(completion, stop_reasons.get(i), request)
                # The parser streamed only the content before the first call: the rest of
                # what the model wrote goes out now, so streamed text adds up to the turn.
                if completion.text.startswith(texts[i]) and len(completion.text) > len(texts[i]):
                    yield StreamDelta(index=i, text=completion.text[len(texts[i]) :])
            completions.append(completion)
        yield GenerationResult(
            completions=completions,
            prompt_token_ids=prompt_ids,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            engine_ms=(time.perf_counter() - started) * 1000,
            model=request.model or self.base_model,
        )

    async def _sampled_text(
        self, completion: Completion, stop_reason: Any, request: GenerationRequest
    ) -> str:
        """The text the model wrote: its token ids decoded by the upstream (vLLM's
        /detokenize), else its log-prob tokens joined where they decode cleanly, else the
        parsed turn as ``completion.text`` already has it."""
        decoded = await self._detokenized(completion.token_ids, request)
        if (
            decoded is None
            and completion.tokens
            and len(completion.tokens) == len(completion.token_ids)
        ):
            joined = "".join(completion.tokens)
            # A token that is part of a UTF-8 character decodes alone to U+FFFD.
            decoded = None if "\ufffd" in joined else joined
        return completion.text if decoded is None else sampled_text(decoded, stop_reason)

    async def _detokenized(self, token_ids: list[int], request: GenerationRequest) -> str | None:
        if not self._detokenize or not token_ids:
            return None
        root = self.base_url.removesuffix("/v1")
        model = self.check_model(request.model) or self.upstream_model
        try:
            resp = await self.http.post(
                f"{root}/detokenize", json={"model": model, "tokens": token_ids}
            )
            decoded = resp.json().get("prompt") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if resp.status_code == 404:  # not a vLLM: no /detokenize to ask again
            self._detokenize = False
        return decoded if isinstance(decoded, str) else None

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
        if resp.status_code >= 500:
            raise ServiceUnavailable(message)
        raise upstream_refusal(resp.status_code, message, param)


def _stream_chunk(data: str, base_url: str) -> dict[str, Any]:
    """One SSE ``data:`` payload; an error event or anything but a JSON object is a 502."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise UpstreamError(f"upstream {base_url} streamed something that is not JSON") from exc
    if not isinstance(chunk, dict):
        raise UpstreamError(f"upstream {base_url} streamed something that is not a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise UpstreamError(f"upstream {base_url} failed mid-stream: {message}")
    return chunk


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


def _raise_lora_error(resp: httpx.Response, path: str) -> None:
    """vLLM's answers to a failed /v1/load_lora_adapter (vllm/entrypoints/openai/models/
    serving.py load_lora_adapter) as the policy's own: a bad adapter or name is the
    caller's 400, not a 404 model or a 503; a missing route is a deployment fault."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        if resp.status_code == 404:  # FastAPI's own 404: the route is not mounted
            raise ServiceUnavailable(
                "the upstream has no /v1/load_lora_adapter: vLLM mounts it only with "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        return
    message = str(error.get("message"))
    if resp.status_code in (502, 503, 504):
        return
    if "already been loaded" in message:
        raise InvalidInput(f"upstream: {message}", param="name")
    # 404 no adapter at the path, 500 rank over --max-lora-rank or LoRA off, 400 bad fields
    raise InvalidInput(f"upstream could not load the adapter at '{path}': {message}", param="path")


def _finish(reason: str | None) -> Any:
    return "length" if reason == "length" else "stop"


def _completion(choice: dict[str, Any]) -> Completion:
    message = choice.get("message") or {}
    text = rebuilt_text(
        message.get("content"),
        [
            (tc["function"]["name"], tc["function"].get("arguments") or "{}")
            for tc in message.get("tool_calls") or []
        ],
    )
    if message.get("tool_calls"):  # the turn as sampled, not rebuilt (upstream_text.py)
        text = text_from_logprob_bytes(choice) or text
    logprobs = tokens = top = None
    content = (choice.get("logprobs") or {}).get("content")
    if content:
        logprobs = [float(t["logprob"]) for t in content]
        tokens = [t["token"] for t in content]
        top = [
            [(str(e["token"]), float(e["logprob"])) for e in t.get("top_logprobs") or []]
            for t in content
        ]
    return Completion(
        text=text,
        token_ids=list(choice.get("token_ids") or []),
        finish_reason=_finish(choice.get("finish_reason")),
        logprobs=logprobs,
        tokens=tokens,
        top_logprobs=top if top and any(top) else None,
    )
