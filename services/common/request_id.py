"""Request ids, and the outermost guard: every response carries `X-Request-ID`, and an
unexpected exception becomes a logged 500 envelope that names the id instead of a trace."""

from __future__ import annotations

import contextvars
import json
import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("magsrl.errors")
HEADER = "x-request-id"
_MAX_LEN = 128
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def _accept(value: str) -> bool:
    # A client-supplied id goes into logs: keep it short and printable.
    return 0 < len(value) <= _MAX_LEN and value.isprintable()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(HEADER.encode(), b"").decode("latin-1")
        rid = incoming if _accept(incoming) else uuid.uuid4().hex
        # Not reset afterwards: each request runs in its own task, and handlers that run
        # after this middleware returns (server error logging) still want the id.
        _request_id.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((HEADER.encode(), rid.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if started:
                raise
            # Imported here: errors.py imports this module for current_request_id.
            from magsrl.common.http_errors import error_body

            body = json.dumps(
                error_body(
                    500,
                    "internal error; the server log has details under this request id",
                    error_type="internal_error",
                )
            ).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        return True
