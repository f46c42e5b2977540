"""What answers the eval's questions. ``PolicyBackend`` calls a policy service's
``/answer``; ``OpenAIBackend`` runs the same zoom loop client-side against any
OpenAI-compatible endpoint (vLLM, another provider) with the magnifier for crops.

Both return the policy's ``AnswerResponse`` and sort failures in two: ``SampleFailed`` (this
sample cannot be answered: recorded, and the run goes on) and ``BackendDown`` (nothing can
be answered now: the run stops, keeping its results, and resumes later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from magsrl.clients.magnifier import MagnifierClient
from magsrl.clients.policy import PolicyAuthError, PolicyClient, PolicyError, PolicyUnavailable
from magsrl.common.errors import APIError
from magsrl.common.images import decode_b64
from magsrl.engines.openai_upstream import OpenAIEngine
from magsrl.engines.settings import EngineSettings
from magsrl.eval.config import EvalConfig, EvalSettings
from magsrl.proto.episode import ServedOptions
from magsrl.proto.policy import AnswerRequest, AnswerResponse
from magsrl.zoom.answer import answer_episode
from magsrl.zoom.loop import ZoomLoop

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
    """A magsrl policy service: ``POST /answer`` through the ``PolicyClient``."""

    def __init__(self, config: EvalConfig, settings: EvalSettings) -> None:
        self.url = config.policy_url.rstrip("/")
        key = config.api_key.get_secret_value() if config.api_key else None
        self.client = PolicyClient(self.url, api_key=key, timeout_s=settings.eval_timeout_s)
        self.model = config.model
        self.settings = settings

    async def describe(self) -> dict[str, str]:
        try:
            models = await self.client.models()
        except PolicyAuthError as exc:
            raise BackendDown(str(exc)) from exc
        except PolicyUnavailable as exc:
            raise BackendDown(f"{exc}; start it (magsrl up) or pass --policy URL") from exc
        except PolicyError as exc:
            raise BackendDown(f"the policy's /v1/models answered {exc.status}") from exc
        names = [m.id for m in models]
        if self.model is not None and self.model not in names:
            raise BackendDown(f"the policy does not serve {self.model!r} (it has {names})")
        described = {"kind": "policy", "url": self.url, "model": self.model or names[0]}
        # The protocol it serves decides an unset turn limit (the report says which); an
        # older policy without /v1/policy/info leaves it unknown.
        with contextlib.suppress(PolicyError):
            described["protocol"] = (await self.client.info()).served.protocol
        return described

    async def answer(self, request: AnswerRequest) -> AnswerResponse:
        async def call() -> AnswerResponse:
            try:
                return await self.client.answer(request)
            except PolicyAuthError as exc:
                raise BackendDown(str(exc)) from exc
            except PolicyUnavailable as exc:
                if exc.status in RETRY_STATUSES or exc.status == 0:
                    raise _Transient(str(exc)) from exc
                raise SampleFailed(f"{exc.status}: {exc.message}") from exc
            except PolicyError as exc:
                raise SampleFailed(f"{exc.status}: {exc.message}") from exc

        return await with_retries(
            call, self.settings.eval_retries, self.settings.eval_retry_backoff_s
        )

    async def close(self) -> None:
        await self.client.close()


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint, with the zoom loop run here: the same episode as
    ``/answer`` (``magsrl.zoom.answer``) over the ``openai`` engine, so prompts, box parsing,
    crops and answer normalisation are exactly what the policy does. The engine learns the
    model's family from the endpoint (or ``MAGSRL_POLICY_FAMILY``), never from its name."""

    def __init__(self, config: EvalConfig, settings: EvalSettings) -> None:
        assert config.openai_url is not None and config.model is not None  # EvalConfig.check
        self.url = config.openai_url
        self.engine = OpenAIEngine(
            EngineSettings(
                policy_model=config.model,
                family=settings.policy_family,
                upstream_url=config.openai_url,
                upstream_api_key=config.openai_api_key,
                upstream_timeout_s=settings.eval_timeout_s,
            )
        )
        key = config.api_key.get_secret_value() if config.api_key else None
        self.magnifier = MagnifierClient(
            config.magnifier_url, api_key=key, timeout_s=settings.eval_timeout_s
        )
        self.loop = ZoomLoop(self.engine, self.magnifier)
        # Client-side there is no policy: its defaults, with the eval's own choices on top.
        self.served = ServedOptions(protocol=config.protocol or "tags")
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
        if request.image.b64 is None:
            raise SampleFailed("the openai backend takes inline images only")
        data = decode_b64(request.image.b64)

        async def call() -> AnswerResponse:
            try:
                return await answer_episode(
                    self.loop,
                    request,
                    data,
                    None,
                    self.served,
                    max_image_pixels=self.settings.max_image_pixels,
                )
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


def make_backend(config: EvalConfig, settings: EvalSettings) -> Backend:
    if config.backend == "openai":
        return OpenAIBackend(config, settings)
    return PolicyBackend(config, settings)
