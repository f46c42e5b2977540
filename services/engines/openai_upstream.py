"""The ``openai`` engine: one or several upstream OpenAI-compatible servers (vLLM containers
in production, or another magsrl policy). Images travel as data URLs, a client's JPEG or PNG
as the bytes it sent (engines/wire_images.py), anything else encoded off the event loop;
each conversation is routed to one upstream (engines/upstream_pool.py); LoRA adapters load
at runtime through vLLM's ``/v1/load_lora_adapter`` on every upstream; sampled token ids
come from vLLM's ``return_token_ids``.

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

import asyncio
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from magsrl.common.errors import ServiceUnavailable, UpstreamError
from magsrl.engines.logprobs_mode import observed_mode
from magsrl.engines.settings import EngineSettings
from magsrl.engines.upstream_adapters import UNREACHABLE, AdapterFanOut
from magsrl.engines.upstream_limits import upstream_disagreement
from magsrl.engines.upstream_pool import Upstream, UpstreamPool
from magsrl.engines.upstream_replies import (
    FAMILY_FIELD,
    StreamState,
    completion_from_choice,
    family_from_card,
    raise_for,
    stream_chunk,
    upstream_refusal,
)
from magsrl.engines.upstream_text import rebuilt_text, sampled_text
from magsrl.engines.wire_images import wire_messages
from magsrl.zoom.engine import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
from magsrl.zoom.families import ModelFamily, resized_size

__all__ = ["FAMILY_FIELD", "OpenAIEngine", "family_from_card", "upstream_refusal"]
_completion = completion_from_choice  # the name tests/test_rerender.py imports


class OpenAIEngine(Engine):
    # The chat service may hand image parts their client bytes (``source``) instead of
    # decoded pixels: this engine forwards bytes and needs no pixels.
    passes_image_bytes = True

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
        self.pool = UpstreamPool(
            settings.upstreams(),
            retry_s=settings.upstream_retry_s,
            sticky_slack=settings.upstream_sticky_slack,
        )
        self.base_url = self.pool.upstreams[0].url  # the first upstream, for messages
        self.http = httpx.AsyncClient(timeout=settings.upstream_timeout_s, headers=headers)
        self.adapters = AdapterFanOut(self.pool, self._post_to)
        self._images = ThreadPoolExecutor(settings.image_threads, thread_name_prefix="images")

    async def start(self) -> None:
        # Learn the family (and the adapters) once now; /ready retries while the upstream
        # is still starting.
        await self.ready()

    async def close(self) -> None:
        await self.http.aclose()
        self._images.shutdown(wait=False, cancel_futures=True)

    # ---- health ---------------------------------------------------------------------
    async def ready(self) -> str | None:
        """None when at least one upstream serves; an upstream that fails its check is
        marked down (and skipped by routing) until it passes again."""
        problems = await asyncio.gather(*(self._check(u) for u in self.pool))
        if any(p is None for p in problems):
            return None
        if len(problems) == 1:
            return problems[0]
        return "no upstream serves: " + "; ".join(p for p in problems if p)

    async def _check(self, upstream: Upstream) -> str | None:
        started = self.pool.clock()
        problem = await self._probe(upstream)
        if problem is None:
            self.pool.mark_up(upstream)
        elif upstream.last_ok <= started:  # a later check that passed wins over this one
            self.pool.mark_down(upstream, problem)
        return problem

    async def _probe(self, upstream: Upstream) -> str | None:
        """Why ``upstream`` cannot serve, or None; on the way, learns the family and the
        upstream's adapters, and loads the ones it lacks."""
        try:
            resp = await self.http.get(f"{upstream.url}/models")
        except httpx.HTTPError as exc:
            return f"upstream {upstream.url} unreachable ({exc.__class__.__name__})"
        if resp.status_code != 200:
            return f"upstream {upstream.url}/models answered {resp.status_code}"
        try:
            cards = [m for m in resp.json().get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError, TypeError):
            return f"upstream {upstream.url}/models answered something that is not a model list"
        names = [m.get("id") for m in cards]
        if self.upstream_model not in names:
            return (
                f"upstream {upstream.url} does not serve '{self.upstream_model}' (it has {names})"
            )
        upstream.adapters = [n for n in names if n != self.upstream_model]
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
        problem = await self._check_logprobs_mode(upstream, card)
        return problem or await self.adapters.restore(upstream)

    async def _check_logprobs_mode(self, upstream: Upstream, card: dict[str, Any]) -> str | None:
        """None when the upstream reports the log-probs mode the settings expect (or the
        probe cannot tell); otherwise why the policy must not serve training. A magsrl
        policy says its mode on its model card; vLLM says nothing, so it is probed."""
        if upstream.mode_checked:
            return None
        expected = self.settings.upstream_logprobs_mode
        if card.get("logprobs_mode"):
            mode, why = str(card["logprobs_mode"]), "its model card says so"
            if mode != expected:
                return (
                    f"the upstream reports {mode} ({why}), but MAGSRL_UPSTREAM_LOGPROBS_MODE "
                    f"is {expected}"
                )
            upstream.mode_checked = True
            return None

        async def post(payload: dict[str, Any]) -> dict[str, Any] | None:
            try:
                resp = await self._post_to(upstream, "/chat/completions", payload)
                return resp.json() if resp.status_code == 200 else None
            except (ServiceUnavailable, ValueError):
                return None

        mode, why = await observed_mode(post, self.upstream_model)
        if mode is not None and mode != expected:
            return (
                f"the upstream reports {mode} ({why}), but MAGSRL_UPSTREAM_LOGPROBS_MODE is "
                f"{expected}: start vLLM with --logprobs-mode {expected}"
            )
        upstream.mode_checked = True
        return None

    @property
    def family(self) -> ModelFamily:  # type: ignore[override]
        """Learned from the upstream by ``ready``; a 503 until then."""
        if self._family is None:
            raise ServiceUnavailable(self._family_problem)
        return self._family

    def model_names(self) -> list[str]:
        seen = dict.fromkeys(self.adapters.loaded)
        for upstream in self.pool.available():
            seen.update(dict.fromkeys(upstream.adapters))
        return [self.base_model, *seen]

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

    # ---- adapters: every upstream, or none (engines/upstream_adapters.py) ---------------
    async def load_adapter(self, name: str, path: str) -> None:
        await self.adapters.load(name, path)

    async def unload_adapter(self, name: str) -> None:
        self.check_model(name)
        await self.adapters.unload(name)

    # ---- generation -----------------------------------------------------------------
    async def _payload(self, request: GenerationRequest, stream: bool) -> tuple[bytes, str]:
        """The upstream request as JSON bytes, and its routing key. Image encoding and the
        JSON of megabytes of base64 run in the engine's image threads, never on the loop."""
        if request.model not in (None, self.base_model, *self.model_names()):
            # Policy replicas share their engines: another may have loaded this adapter.
            await self.ready()
        adapter = self.check_model(request.model)
        s = request.sampling
        payload: dict[str, Any] = {
            "model": adapter or self.upstream_model,
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
        return await asyncio.get_running_loop().run_in_executor(
            self._images, _request_body, payload, request.messages
        )

    async def _route(self, key: str, tried: set[str]) -> Upstream:
        """The upstream for the next try of a request; one that was down is checked (and
        given its adapters back) before it takes traffic again."""
        while True:
            upstream = self.pool.pick(key, frozenset(tried))
            if upstream is None:
                down = "; ".join(f"{u.url}: {u.problem}" for u in self.pool if u.problem)
                raise ServiceUnavailable(f"no upstream is reachable ({down or 'all tried'})")
            if upstream.problem is None:
                return upstream
            if await self._check(upstream) is None:
                return upstream
            tried.add(upstream.url)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        payload, key = await self._payload(request, stream=False)
        tried: set[str] = set()
        while True:
            upstream = await self._route(key, tried)
            with self.pool.lease(upstream):
                try:
                    resp = await self.http.post(
                        f"{upstream.url}/chat/completions", content=payload, headers=JSON
                    )
                    break
                except UNREACHABLE as exc:
                    self.pool.mark_down(upstream, f"{exc.__class__.__name__}: {exc}")
                    tried.add(upstream.url)
                except httpx.HTTPError as exc:
                    raise ServiceUnavailable(
                        f"upstream {upstream.url} failed ({exc.__class__.__name__}: {exc})"
                    ) from exc
        raise_for(resp, upstream.url)
        try:
            body = resp.json()
            choices = body["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("'choices' is empty or not a list")
            completions = [completion_from_choice(choice) for choice in choices]
            usage = body.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(
                f"upstream {upstream.url} answered something that is not an OpenAI chat "
                f"completion ({exc.__class__.__name__}: {str(exc)[:200]})"
            ) from exc
        for choice, completion in zip(choices, completions, strict=True):
            if (choice.get("message") or {}).get("tool_calls"):
                completion.text = await self._sampled_text(
                    completion, choice.get("stop_reason"), request, upstream
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
        payload, key = await self._payload(request, stream=True)
        tried: set[str] = set()
        while True:
            upstream = await self._route(key, tried)
            acc = StreamState()
            with self.pool.lease(upstream):
                try:
                    async for delta in self._stream_from(upstream, payload, acc):
                        yield delta
                    break
                except UNREACHABLE as exc:
                    if acc.yielded:  # text already went out: the caller sees the failure
                        raise ServiceUnavailable(
                            f"upstream {upstream.url} failed mid-stream: {exc}"
                        ) from exc
                    self.pool.mark_down(upstream, f"{exc.__class__.__name__}: {exc}")
                    tried.add(upstream.url)
                except httpx.HTTPError as exc:
                    raise ServiceUnavailable(
                        f"upstream {upstream.url} failed mid-stream: {exc}"
                    ) from exc
                except (KeyError, TypeError, AttributeError) as exc:
                    raise UpstreamError(
                        f"upstream {upstream.url} streamed a malformed chunk "
                        f"({exc.__class__.__name__}: {str(exc)[:200]})"
                    ) from exc
        if not acc.texts:
            raise UpstreamError(f"upstream {upstream.url} streamed no choices")
        completions = []
        for i in sorted(acc.texts):
            completion = completion_from_choice(
                {
                    "message": {"content": acc.texts[i]},
                    "token_ids": acc.ids.get(i, []),
                    "finish_reason": acc.finish.get(i),
                    "logprobs": {"content": acc.logprobs.get(i)},
                }
            )
            if acc.calls.get(i):
                parsed = [(c["name"], c["arguments"]) for _, c in sorted(acc.calls[i].items())]
                text = acc.texts[i]
                completion.text = rebuilt_text(text, parsed)
                completion.text = await self._sampled_text(
                    completion, acc.stop_reasons.get(i), request, upstream
                )
                # The parser streamed only the content before the first call: the rest of
                # what the model wrote goes out now, so streamed text adds up to the turn.
                if completion.text.startswith(text) and len(completion.text) > len(text):
                    yield StreamDelta(index=i, text=completion.text[len(text) :])
            completions.append(completion)
        yield GenerationResult(
            completions=completions,
            prompt_token_ids=acc.prompt_ids,
            prompt_tokens=int(acc.usage.get("prompt_tokens", 0)),
            engine_ms=(time.perf_counter() - started) * 1000,
            model=request.model or self.base_model,
        )

    async def _stream_from(
        self, upstream: Upstream, payload: bytes, acc: StreamState
    ) -> AsyncIterator[StreamDelta]:
        url = f"{upstream.url}/chat/completions"
        async with self.http.stream("POST", url, content=payload, headers=JSON) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise_for(resp, upstream.url)
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = stream_chunk(line[len("data: ") :], upstream.url)
                for delta in acc.add(chunk):
                    acc.yielded = True
                    yield delta

    async def _sampled_text(
        self,
        completion: Completion,
        stop_reason: Any,
        request: GenerationRequest,
        upstream: Upstream,
    ) -> str:
        """The text the model wrote: its token ids decoded by the upstream (vLLM's
        /detokenize), else its log-prob tokens joined where they decode cleanly, else the
        parsed turn as ``completion.text`` already has it."""
        decoded = await self._detokenized(completion.token_ids, request, upstream)
        if (
            decoded is None
            and completion.tokens
            and len(completion.tokens) == len(completion.token_ids)
        ):
            joined = "".join(completion.tokens)
            # A token that is part of a UTF-8 character decodes alone to U+FFFD.
            decoded = None if "\ufffd" in joined else joined
        return completion.text if decoded is None else sampled_text(decoded, stop_reason)

    async def _detokenized(
        self, token_ids: list[int], request: GenerationRequest, upstream: Upstream
    ) -> str | None:
        if not upstream.detokenize or not token_ids:
            return None
        root = upstream.url.removesuffix("/v1")
        model = self.check_model(request.model) or self.upstream_model
        try:
            resp = await self.http.post(
                f"{root}/detokenize", json={"model": model, "tokens": token_ids}
            )
            decoded = resp.json().get("prompt") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if resp.status_code == 404:  # not a vLLM: no /detokenize to ask again
            upstream.detokenize = False
        return decoded if isinstance(decoded, str) else None

    # ---- plumbing -------------------------------------------------------------------
    async def _post_to(
        self, upstream: Upstream, path: str, payload: dict[str, Any]
    ) -> httpx.Response:
        try:
            return await self.http.post(f"{upstream.url}{path}", json=payload)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"upstream {upstream.url} is unreachable ({exc.__class__.__name__}: {exc})"
            ) from exc


JSON = {"Content-Type": "application/json"}


def _request_body(payload: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[bytes, str]:
    """The chat request as JSON bytes, and its routing key (the model, and the
    conversation's opening: engines/wire_images.py). Blocking: runs in the image threads."""
    wired, key = wire_messages(messages)
    body = {"model": payload["model"], "messages": wired, **payload}
    return json.dumps(body).encode(), f"{payload['model']}:{key}"
