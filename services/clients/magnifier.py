"""An async client for the magnifier, used by the policy and the rollout workers. httpx only:
importing it pulls in no torch."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from prometheus_client import CollectorRegistry, Counter

from magsrl.common.remote import remote_error
from magsrl.proto.images import ImageInfo, ImageRef
from magsrl.proto.magnifier import ZoomRequest, ZoomResponse


class MagnifierError(Exception):
    """The magnifier refused a request (4xx): ``message`` is its explanation."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class MagnifierUnavailable(Exception):
    """The magnifier could not be reached, timed out, or answered 5xx."""


class MagnifierClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        client: httpx.AsyncClient | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = client is None
        self.http = client or httpx.AsyncClient(timeout=timeout_s)
        self.base_url = base_url.rstrip("/")
        self.headers = headers
        # Request bytes per endpoint: shows that an image is uploaded once per /answer.
        self.requests = Counter(
            "magsrl_magnifier_client_requests_total",
            "Requests to the magnifier, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.bytes_sent = Counter(
            "magsrl_magnifier_client_bytes_sent_total",
            "Request body bytes sent to the magnifier, by endpoint.",
            ["endpoint"],
            registry=registry,
        )

    async def close(self) -> None:
        if self._own:
            await self.http.aclose()

    async def _post(self, path: str, content: bytes | str, content_type: str) -> httpx.Response:
        try:
            resp = await self.http.post(
                f"{self.base_url}{path}",
                content=content,
                headers={**self.headers, "Content-Type": content_type},
            )
        except httpx.HTTPError as exc:
            raise MagnifierUnavailable(
                f"the magnifier at {self.base_url} is unreachable ({exc.__class__.__name__}: {exc})"
            ) from exc
        self.requests.labels(path).inc()
        self.bytes_sent.labels(path).inc(len(resp.request.content or b""))
        if resp.status_code >= 500:
            raise MagnifierUnavailable(
                f"the magnifier at {self.base_url} answered {resp.status_code}: {_message(resp)}"
            )
        if resp.status_code >= 400:
            message, param = remote_error(resp)
            raise MagnifierError(resp.status_code, message, param)
        return resp

    async def upload(self, data: bytes) -> ImageInfo:
        resp = await self._post("/v1/images", data, "application/octet-stream")
        return ImageInfo.model_validate(resp.json())

    async def zoom(
        self,
        image_id: str,
        boxes: Sequence[Sequence[float]],
        *,
        coords: str = "norm1",
        method: str = "sr",
        max_pixels: int | None = None,
        fmt: str = "png",
        quality: int = 90,
    ) -> ZoomResponse:
        request = ZoomRequest(
            image=ImageRef(id=image_id),
            boxes=[list(b) for b in boxes],
            coords=coords,
            method=method,
            max_pixels=max_pixels,  # type: ignore[arg-type]
            format=fmt,
            quality=quality,
        )  # type: ignore[arg-type]
        resp = await self._post(
            "/v1/zoom", request.model_dump_json(exclude_none=True), "application/json"
        )
        return ZoomResponse.model_validate(resp.json())

    async def get_image(self, image_id: str) -> bytes | None:
        """The stored image as PNG, or None when the magnifier does not hold it."""
        try:
            resp = await self.http.get(
                f"{self.base_url}/v1/images/{image_id}", headers=self.headers
            )
        except httpx.HTTPError as exc:
            raise MagnifierUnavailable(
                f"the magnifier at {self.base_url} is unreachable: {exc}"
            ) from exc
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise MagnifierUnavailable(
                f"the magnifier answered {resp.status_code}: {_message(resp)}"
            )
        return resp.content


def _message(resp: httpx.Response) -> str:
    return remote_error(resp)[0]
