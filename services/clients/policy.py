"""An async client for the policy service, used everywhere the policy is called: ``magsrl
answer``, eval's policy backend, the judge's pass_rate method, the trainer's adapter loads
and the rollout worker. httpx only: importing it pulls in no torch.

Errors::

    PolicyError              the policy answered but refused (status, message, param)
    ├── PolicyRefused        4xx: the request is at fault
    │   └── PolicyAuthError  401/403: the key is missing or wrong
    └── PolicyUnavailable    unreachable, timed out, or 5xx: worth a retry later
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from magsrl.common.remote import remote_error
from magsrl.proto.limits import EngineLimits
from magsrl.proto.policy import (
    AnswerRequest,
    AnswerResponse,
    LoadWeightsRequest,
    PolicyInfo,
    WeightsStatus,
)

DEFAULT_TIMEOUT_S = 600.0


class PolicyError(Exception):
    """The policy could not do what was asked; ``status`` is its HTTP status (0: none)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(f"{message} (param: {param})" if param else message)
        self.status = status
        self.message = message
        self.param = param


class PolicyRefused(PolicyError):
    """A 4xx: this request is at fault (bad input, unknown model or adapter)."""


class PolicyAuthError(PolicyRefused):
    """401 or 403: set MAGSRL_API_KEY to the policy's key."""


class PolicyUnavailable(PolicyError):
    """The policy is unreachable, timed out, or answered 5xx."""


class ModelEntry(BaseModel):
    """One card of ``GET /v1/models``, as far as magsrl reads it."""

    id: str
    root: str | None = None
    parent: str | None = None
    family: str | None = None  # magsrl's extension; absent from other servers


class PolicyClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self._own = client is None
        self.http = client or httpx.AsyncClient(timeout=timeout_s)

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own:
            await self.http.aclose()

    # ---- plumbing ---------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = await self.http.request(
                method,
                f"{self.base_url}{path}",
                headers={**self.headers, **kwargs.pop("headers", {})},
                timeout=self.timeout_s,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(
                0,
                f"the policy at {self.base_url} is unreachable ({exc.__class__.__name__}: "
                f"{exc}); start it with `magsrl serve policy` or `magsrl up`",
            ) from exc
        if resp.status_code < 400:
            return resp
        message, param = remote_error(resp)
        if resp.status_code >= 500:
            raise PolicyUnavailable(
                resp.status_code, f"the policy answered {resp.status_code}: {message}", param
            )
        if resp.status_code in (401, 403):
            raise PolicyAuthError(resp.status_code, f"the policy refused the key: {message}")
        raise PolicyRefused(resp.status_code, message, param)

    @staticmethod
    def _parse(model: type[Any], resp: httpx.Response) -> Any:
        try:
            return model.model_validate(resp.json())
        except (ValueError, ValidationError) as exc:
            raise PolicyUnavailable(
                resp.status_code, f"the policy's reply is not a {model.__name__}: {exc}"
            ) from exc

    # ---- endpoints ----------------------------------------------------------------------
    async def answer(self, request: AnswerRequest) -> AnswerResponse:
        """``POST /answer`` with a JSON body."""
        body = request.model_dump(mode="json", exclude_none=True)
        return self._parse(AnswerResponse, await self._request("POST", "/answer", json=body))

    async def answer_upload(
        self, image: bytes, filename: str, fields: dict[str, str]
    ) -> AnswerResponse:
        """``POST /answer`` as multipart, the image as a file (``magsrl answer``)."""
        resp = await self._request(
            "POST", "/answer", data=fields, files={"image": (filename, image)}
        )
        return self._parse(AnswerResponse, resp)

    async def models(self) -> list[ModelEntry]:
        """``GET /v1/models``: the base model first, then the loaded adapters."""
        resp = await self._request("GET", "/v1/models")
        try:
            return [ModelEntry.model_validate(card) for card in resp.json()["data"]]
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise PolicyUnavailable(200, f"the policy's model list is malformed: {exc}") from exc

    async def info(self) -> PolicyInfo:
        """``GET /v1/policy/info``: the family and the episode settings it serves."""
        return self._parse(PolicyInfo, await self._request("GET", "/v1/policy/info"))

    async def load_adapter(self, name: str, path: str) -> None:
        await self._request("POST", "/v1/adapters", json={"name": name, "path": path})

    async def unload_adapter(self, name: str, *, missing_ok: bool = False) -> None:
        """``missing_ok``: an adapter the policy does not hold (a restarted policy) is fine."""
        try:
            await self._request("DELETE", f"/v1/adapters/{name}")
        except PolicyRefused as exc:
            if not (missing_ok and exc.status == 404):
                raise

    async def limits(self) -> EngineLimits | None:
        """``GET /v1/limits``: the limits the policy shares with its engine (pixel budget,
        images per prompt, context); None from a policy without the route."""
        try:
            resp = await self._request("GET", "/v1/limits")
        except PolicyRefused as exc:
            if exc.status == 404:
                return None
            raise
        return self._parse(EngineLimits, resp)

    async def weights(self) -> WeightsStatus | None:
        """``GET /v1/weights``: which full weights the base model serves; None when the policy
        has no such route (an older policy, which can never have changed its weights)."""
        try:
            resp = await self._request("GET", "/v1/weights")
        except PolicyRefused as exc:
            if exc.status == 404:
                return None
            raise
        return self._parse(WeightsStatus, resp)

    async def load_weights(self, path: str, name: str | None) -> WeightsStatus:
        """``POST /v1/weights``: the base model takes the weights of model folder ``path``,
        served as ``name`` too (a full fine-tuning version)."""
        body = LoadWeightsRequest(path=path, name=name).model_dump(exclude_none=True)
        return self._parse(WeightsStatus, await self._request("POST", "/v1/weights", json=body))

    async def reset_weights(self) -> WeightsStatus:
        """``DELETE /v1/weights``: back to the served checkpoint's own weights."""
        return self._parse(WeightsStatus, await self._request("DELETE", "/v1/weights"))
