"""An async client for the judge, used by ``magsrl curriculum`` and the trainer's
re-scoring. httpx only."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from magsrl.common.remote import remote_error
from magsrl.proto.judge import BatchScoreRequest, BatchScoreResponse, Method, ScoreRequest

DEFAULT_TIMEOUT_S = 600.0


class JudgeError(Exception):
    """The judge refused a request (4xx)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(f"{message} (param: {param})" if param else message)
        self.status = status
        self.message = message
        self.param = param


class JudgeUnavailable(Exception):
    """The judge could not be reached, timed out, or answered 5xx."""


class JudgeClient:
    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def score_batch(
        self, items: Sequence[ScoreRequest], method: Method | None = None
    ) -> BatchScoreResponse:
        body = BatchScoreRequest(items=list(items), method=method)
        url = f"{self.base_url}/v1/score/batch"
        try:
            resp = await self.http.post(
                url,
                content=body.model_dump_json(exclude_none=True),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise JudgeUnavailable(
                f"the judge at {self.base_url} is unreachable ({exc.__class__.__name__}); start "
                "it with `magsrl serve judge` or `magsrl up`, or pass --judge-url"
            ) from exc
        if resp.status_code >= 500:
            raise JudgeUnavailable(
                f"the judge answered {resp.status_code}: {remote_error(resp)[0]}"
            )
        if resp.status_code >= 400:
            raise JudgeError(resp.status_code, *remote_error(resp))
        return BatchScoreResponse.model_validate(resp.json())
