"""The errors magsrl raises on purpose, as plain Python: no web framework, no status codes.

Every layer raises these; only the HTTP edge (``magsrl.common.http_errors``, installed by the
app factory) turns them into a status and the ``{"error": {...}}`` envelope. The class says
*whose fault* it is and what a caller can do about it; the edge's table says which status
that becomes (shown on the right for reference, defined there and only there)::

    MagsrlError (APIError)            anything magsrl raises on purpose
     ├── InvalidInput (BadRequest)     the caller's request is wrong; ``param`` names   400
     │    │                            the field to fix
     │    ├── UnprocessableEntity      well-formed, but cannot be acted on              422
     │    └── TooLarge                 over a size limit (PayloadTooLarge)              413
     ├── Unauthorized                  missing or wrong credentials                     401
     ├── NotFound                      the named thing does not exist                   404
     ├── Conflict                      clashes with the current state (a taken name)    409
     ├── Unavailable                   a dependency is down or not ready yet; retry     503
     │    │                            later (ServiceUnavailable)
     │    └── ResourceExhausted        out of memory or capacity: the server's         503
     │                                 problem, never the caller's
     └── UpstreamError                 a dependency answered, with something unusable   502

Anything else that escapes is a bug: the edge renders it as a 500 naming the request id,
never as a stack trace.

The old names (``APIError``, ``BadRequest``, ``PayloadTooLarge``, ``ServiceUnavailable``)
are the same classes, so code written against them keeps working. ``validation_message``
turns pydantic's error list into one readable line; it is here because the CLI and eval
report validation errors too, not only the HTTP edge.
"""

from __future__ import annotations

from typing import Any


class MagsrlError(Exception):
    """Base of every deliberate magsrl error. ``message`` is for the person reading it;
    ``param`` (optional) names the request field at fault, as the OpenAI API does."""

    # The envelope's ``type``: a stable, transport-neutral name for the kind of error
    # (OpenAI's vocabulary where one exists), readable by a batch that reports per item.
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    # Compatibility with code written before the split, which read or set a number. New
    # code branches on the class; the edge's table (imported late, so this module stays
    # free of the web layer) answers reads, and an explicit setting wins over it.
    _status_override: int | None = None

    @property
    def status_code(self) -> int:
        """The HTTP status the edge renders this error as."""
        from magsrl.common.http_errors import http_status

        return http_status(self)

    @status_code.setter
    def status_code(self, value: int) -> None:
        self._status_override = value


class InvalidInput(MagsrlError):
    """The caller sent something wrong; resending it unchanged fails the same way."""


class UnprocessableEntity(InvalidInput):
    """Well-formed and valid field by field, but it cannot be acted on (e.g. a box that
    leaves nothing after clamping)."""


class TooLarge(InvalidInput):
    """Over a size limit (bytes, pixels, tokens): the caller must send less."""

    error_type = "payload_too_large"


class Unauthorized(MagsrlError):
    error_type = "authentication_error"


class NotFound(MagsrlError):
    error_type = "not_found_error"


class Conflict(MagsrlError):
    error_type = "conflict_error"


class Unavailable(MagsrlError):
    """A dependency (a model still loading, the magnifier, Redis, an upstream server) is
    down or not ready. Not the caller's fault; the same request may succeed later."""

    error_type = "service_unavailable"


class ResourceExhausted(Unavailable):
    """The server ran out of memory or capacity doing a valid request (e.g. loading an
    adapter on a full GPU). Not the caller's fault; retry after load drops."""

    error_type = "resource_exhausted"


class UpstreamError(MagsrlError):
    """A dependency answered, but with something unusable (an unreadable reply, a broken
    protocol). Retrying may not help; the operator should look at the dependency."""

    error_type = "upstream_error"


# The names the code used before the hierarchy had meanings; the same classes.
APIError = MagsrlError
BadRequest = InvalidInput
PayloadTooLarge = TooLarge
ServiceUnavailable = Unavailable


def loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str:
    """("body", "boxes", 0, 2) -> "boxes[0][2]": the path a client can find in its payload."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or ".".join(str(p) for p in loc)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Pydantic's error list as one line (the first five) and the first field at fault."""
    pieces = []
    for err in errors[:5]:
        param = loc_to_param(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        # A validator's own ValueError reads as written, without pydantic's prefix.
        msg = msg.removeprefix("Value error, ")
        pieces.append(f"{param}: {msg}" if param else msg)
    if len(errors) > 5:
        pieces.append(f"... and {len(errors) - 5} more")
    first = loc_to_param(errors[0].get("loc", ())) if errors else None
    return "; ".join(pieces), first


def __getattr__(name: str) -> Any:
    # Merge shim: branches written before the split import the envelope helpers from here.
    # They live at the edge now; forwarded lazily so importing this module pulls no FastAPI.
    if name in ("error_body", "error_response", "install_error_handlers", "http_status"):
        from magsrl.common import http_errors

        return getattr(http_errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
