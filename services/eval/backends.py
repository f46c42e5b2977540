"""What answers the eval's questions. ``PolicyBackend`` calls a policy service's
``/answer``; ``OpenAIBackend`` runs the same zoom loop client-side against any
OpenAI-compatible endpoint (vLLM, another provider) with the magnifier for crops.

Both return the policy's ``AnswerResponse`` and sort failures in two: ``SampleFailed`` (this
sample cannot be answered: recorded, and the run goes on) and ``BackendDown`` (nothing can
be answered now: the run stops, keeping its results, and resumes later).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx

from magsrl.common.errors import APIError
from magsrl.common.remote import remote_error
from magsrl.eval.config import EvalConfig, EvalSettings
from magsrl.proto.policy import AnswerRequest, AnswerResponse

log = logging.getLogger("magsrl.eval")

# Worth a retry: the server is starting, overloaded, or restarting behind a proxy.
RETRY_STATUSES = frozenset({502, 503, 504})


class SampleFailed(Exception):
    """The backend refused or failed this one sample; the message says why."""


class BackendDown(Exception):
    """The backend cannot answer anything (unreachable, or the key is refused)."""


class Backend(Protocol):
    async def describe(self) -> dict[str, str]:
        """What answers (kind, URL, model), after checking that it is reachable."""
        ...

    async def answer(self, request: AnswerRequest) -> AnswerResponse: ...

    async def close(self) -> None: ...


async def with_retries(
    call: Callable[[], Awaitable[AnswerResponse]], retries: int, backoff_s: float
) -> AnswerResponse:
    """``call`` again after a ``_Transient``, waiting backoff, 2x backoff, ...; the last
    failure becomes ``BackendDown``."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except _Transient as exc:
            if attempt == retries:
                raise BackendDown(str(exc)) from exc
            wait = backoff_s * 2**attempt
            log.warning("%s; retrying in %.1f s", exc, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


class _Transient(Exception):
    pass


class PolicyBackend:
    """A magsrl policy service: ``POST /answer``."""

    def __init__(self, config: EvalConfig, settings: EvalSettings) -> None:
        self.url = config.policy_url.rstrip("/")
        key = config.api_key.get_secret_value() if config.api_key else None
        self.http = httpx.AsyncClient(
            base_url=self.url,
            timeout=settings.eval_timeout_s,
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )
        self.model = config.model
        self.settings = settings

    async def describe(self) -> dict[str, str]:
        try:
            resp = await self.http.get("/v1/models")
        except httpx.HTTPError as exc:
            raise BackendDown(
                f"the policy at {self.url} is unreachable ({exc.__class__.__name__}); "
                "start it (magsrl up) or pass --policy URL"
            ) from exc
        if resp.status_code == 401:
            raise BackendDown(f"the policy refused the API key: {remote_error(resp)[0]}")
        if resp.status_code != 200:
            raise BackendDown(f"the policy's /v1/models answered {resp.status_code}")
        names = [m["id"] for m in resp.json().get("data", [])]
        if self.model is not None and self.model not in names:
            raise BackendDown(f"the policy does not serve {self.model!r} (it has {names})")
        return {"kind": "policy", "url": self.url, "model": self.model or names[0]}

    async def answer(self, request: AnswerRequest) -> AnswerResponse:
        body = request.model_dump(mode="json", exclude_none=True)

        async def call() -> AnswerResponse:
            try:
                resp = await self.http.post("/answer", json=body)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                raise _Transient(f"the policy at {self.url}: {exc.__class__.__name__}") from exc
            if resp.status_code == 200:
                return AnswerResponse.model_validate(resp.json())
            message, _ = remote_error(resp)
            if resp.status_code in RETRY_STATUSES:
                raise _Transient(f"the policy answered {resp.status_code}: {message}")
            if resp.status_code == 401:
                raise BackendDown(f"the policy refused the API key: {message}")
            raise SampleFailed(f"{resp.status_code}: {message}")

        return await with_retries(
            call, self.settings.eval_retries, self.settings.eval_retry_backoff_s
        )

    async def close(self) -> None:
        await self.http.aclose()


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint, with the zoom loop run here: the policy's own
    ``AnswerService`` over its ``openai`` engine, so prompts, box parsing, crops and answer
    normalisation are exactly what ``/answer`` does."""

    def __init__(self, config: EvalConfig, settings: EvalSettings) -> None:
        from magsrl.clients.magnifier import MagnifierClient
        from magsrl.engines.openai_upstream import OpenAIEngine
        from magsrl.policy.config import PolicySettings
        from magsrl.policy.serving_answer import AnswerService
        from magsrl.zoom.loop import ZoomLoop

        assert config.openai_url is not None and config.model is not None  # EvalConfig.check
        policy = PolicySettings(
            engine="openai",
            policy_model=config.model,
            upstream_url=config.openai_url,
            upstream_api_key=config.openai_api_key,
            upstream_timeout_s=settings.eval_timeout_s,
            magnifier_url=config.magnifier_url,
            zoom_protocol=config.protocol,
            api_key=config.api_key,
        )
        key = config.api_key.get_secret_value() if config.api_key else None
        self.url = config.openai_url
        self.engine = OpenAIEngine(policy)
        self.magnifier = MagnifierClient(
            config.magnifier_url, api_key=key, timeout_s=policy.magnifier_timeout_s
        )
        self.http = httpx.AsyncClient(timeout=policy.url_timeout_s)
        self.service = AnswerService(
            self.engine, ZoomLoop(self.engine, self.magnifier), self.magnifier, self.http, policy
        )
        self.settings = settings

    async def describe(self) -> dict[str, str]:
        problem = await self.engine.ready()
        if problem:
            raise BackendDown(problem)
        return {
            "kind": "openai",
            "url": self.url,
            "model": self.engine.upstream_model,
            "magnifier": self.magnifier.base_url,
        }

    async def answer(self, request: AnswerRequest) -> AnswerResponse:
        async def call() -> AnswerResponse:
            try:
                return await self.service.answer(request)
            except APIError as exc:
                if exc.status_code in RETRY_STATUSES:
                    raise _Transient(str(exc)) from exc
                if exc.status_code == 401:
                    raise BackendDown(str(exc)) from exc
                raise SampleFailed(f"{exc.status_code}: {exc}") from exc

        return await with_retries(
            call, self.settings.eval_retries, self.settings.eval_retry_backoff_s
        )

    async def close(self) -> None:
        await self.engine.close()
        await self.magnifier.close()
        await self.http.aclose()


def make_backend(config: EvalConfig, settings: EvalSettings) -> Backend:
    if config.backend == "openai":
        return OpenAIBackend(config, settings)
    return PolicyBackend(config, settings)
