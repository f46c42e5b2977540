"""The HTTP edge of the error hierarchy: which status each ``magsrl.common.errors`` class
becomes, the ``{"error": {...}}`` envelope, and the FastAPI handlers that render both.

Only the app layer (``app.py``, the ASGI middlewares, a service's ``api.py``) imports this
module; everything below raises plain ``MagsrlError`` subclasses. The envelope follows the
OpenAI API's (``type``, ``message``, ``param``) and adds ``code`` (the status) and
``request_id`` (the id in the server log). A stack trace never reaches a client: unexpected
exceptions become a 500 that names the request id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from magsrl.common.errors import (
    Conflict,
    InvalidInput,
    MagsrlError,
    NotFound,
    ResourceExhausted,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnprocessableEntity,
    UpstreamError,
    validation_message,
)
from magsrl.common.request_id import current_request_id

log = logging.getLogger("magsrl.errors")

# The most specific class in an error's MRO wins, so a subclass defined anywhere (e.g. the
# engine's UnknownModel, a NotFound) renders as its nearest listed ancestor.
STATUS: dict[type[MagsrlError], int] = {
    MagsrlError: 400,
    InvalidInput: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    UnprocessableEntity: 422,
    UpstreamError: 502,
    Unavailable: 503,
    ResourceExhausted: 503,
}

# The envelope's ``type`` for statuses that reach us without a MagsrlError (the framework's
# own 404/405, the middlewares' 401/413).
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "payload_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
}


def http_status(exc: MagsrlError) -> int:
    """The status ``exc`` renders as: that of the nearest class in its MRO with an entry.
    A number set on the instance, or as a class attribute by a subclass written before the
    split (``status_code = 502``), still wins."""
    if exc._status_override is not None:
        return exc._status_override
    legacy = getattr(type(exc), "status_code", None)
    if isinstance(legacy, int):
        return legacy
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def error_body(
    status: int, message: str, *, error_type: str | None = None, param: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": error_type or _STATUS_TYPES.get(status, "internal_error"),
        "message": message,
        "code": status,
    }
    if param is not None:
        error["param"] = param
    request_id = current_request_id()
    if request_id:
        error["request_id"] = request_id
    return {"error": error}


def error_response(status: int, message: str, **kwargs: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(status, message, **kwargs), status_code=status, headers=headers)


def render(exc: MagsrlError) -> JSONResponse:
    """One MagsrlError as its status and envelope."""
    return error_response(http_status(exc), exc.message, error_type=exc.error_type, param=exc.param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MagsrlError)
    async def _magsrl_error(_: Request, exc: MagsrlError) -> JSONResponse:
        if http_status(exc) >= 500:
            # The caller gets the message; the operator gets the cause in the log.
            log.warning("%s: %s", type(exc).__name__, exc.message, exc_info=exc.__cause__)
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return error_response(422, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return error_response(
            500,
            "internal error; the server log has details under this request id",
            error_type="internal_error",
        )
