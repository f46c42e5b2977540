"""Bearer-token auth and the request body cap, as pure ASGI middleware (no per-request
task overhead, unlike BaseHTTPMiddleware)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from magsrl.common.http_errors import error_response

# Probes and docs stay open so orchestrators and humans can reach them without the key.
PUBLIC_PATHS = frozenset(
    {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)


def bearer_token(header: bytes) -> bytes:
    """The credentials of an ``Authorization: Bearer <token>`` header, or b"" for any other
    scheme. The scheme name is case-insensitive (RFC 7235 section 2.1), so ``bearer`` and
    ``BEARER`` work as clients such as curl scripts send them."""
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return b""
    return token.strip()


class BearerAuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        api_key: str,
        public_paths: Iterable[str] = PUBLIC_PATHS,
        public_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)

    def _is_public(self, path: str) -> bool:
        return path in self.public_paths or (
            bool(self.public_prefixes) and path.startswith(self.public_prefixes)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(bearer_token(given), self.expected):
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send 'Authorization: Bearer <key>' (the server has "
            "MAGSRL_API_KEY set)"
            if not given
            else "invalid API key"
        )
        await error_response(401, message)(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by Content-Length up front or while
    streaming when the client sends chunks, before the body is buffered in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (
            f"request body exceeds the limit of {self.max_bytes} bytes; send a smaller "
            "image (or upload it once to /v1/images and refer to it by id)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(413, self._message())(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing, so this reaches
                    # the error handlers as a 413 rather than a generic parse error.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)
