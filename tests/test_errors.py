"""The error hierarchy and its HTTP edge: whose fault each class means, which status it
renders as, and the envelope. In-process (FastAPI's TestClient), milliseconds."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from magsrl.common import errors
from magsrl.common.app import create_service_app
from magsrl.common.errors import (
    APIError,
    BadRequest,
    InvalidInput,
    MagsrlError,
    NotFound,
    PayloadTooLarge,
    ResourceExhausted,
    ServiceUnavailable,
    TooLarge,
    Unavailable,
    UnprocessableEntity,
    UpstreamError,
)
from magsrl.common.http_errors import http_status
from magsrl.common.settings import ServiceSettings
from magsrl.engines.openai_upstream import upstream_refusal
from magsrl.zoom.engine import UnknownModel


@pytest.mark.parametrize(
    ("exc", "status", "error_type"),
    [
        pytest.param(InvalidInput("x"), 400, "invalid_request_error", id="invalid-input"),
        pytest.param(UnprocessableEntity("x"), 422, "invalid_request_error", id="unprocessable"),
        pytest.param(TooLarge("x"), 413, "payload_too_large", id="too-large"),
        pytest.param(NotFound("x"), 404, "not_found_error", id="not-found"),
        pytest.param(UnknownModel("x"), 404, "not_found_error", id="unknown-model-subclass"),
        pytest.param(Unavailable("x"), 503, "service_unavailable", id="unavailable"),
        pytest.param(ResourceExhausted("x"), 503, "resource_exhausted", id="oom"),
        pytest.param(UpstreamError("x"), 502, "upstream_error", id="upstream"),
    ],
)
def test_each_class_renders_as_its_status(exc: MagsrlError, status: int, error_type: str) -> None:
    """Pins: a class rendered by the wrong ancestor (an OOM as the caller's 400, an unknown
    model as a 400 because it subclasses the base)."""
    assert http_status(exc) == status
    assert exc.status_code == status  # the compatibility property agrees with the edge
    assert exc.error_type == error_type


def test_old_names_are_the_same_classes() -> None:
    """Pins: a rename that breaks `except BadRequest` written on other branches."""
    assert APIError is MagsrlError
    assert BadRequest is InvalidInput
    assert PayloadTooLarge is TooLarge
    assert ServiceUnavailable is Unavailable
    assert issubclass(ResourceExhausted, ServiceUnavailable)  # retried like any outage
    assert not issubclass(ResourceExhausted, BadRequest)  # never the caller's fault
    assert issubclass(TooLarge, BadRequest)


def test_subclasses_written_before_the_split_keep_their_status() -> None:
    """Pins: a branch's ``class X(APIError): status_code = 502`` (or an instance setting
    ``self.status_code``) silently rendered as a 400 after the merge."""

    class Legacy(APIError):
        status_code = 502  # type: ignore[assignment]

    class Passthrough(APIError):
        def __init__(self, status: int) -> None:
            super().__init__("upstream said no")
            self.status_code = status

    assert http_status(Legacy("x")) == 502
    assert http_status(Passthrough(418)) == 418
    assert http_status(APIError("x")) == 400


def test_envelope_helpers_are_forwarded_lazily() -> None:
    """Pins: code that imports error_body from the core module (written before the split)
    failing with ImportError after the merge."""
    assert errors.error_body(404, "gone")["error"]["type"] == "not_found_error"
    with pytest.raises(AttributeError):
        _ = errors.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        pytest.param(400, InvalidInput, id="400"),
        pytest.param(401, Unavailable, id="401-is-our-key"),
        pytest.param(404, UnknownModel, id="404"),
        pytest.param(413, TooLarge, id="413"),
        pytest.param(422, UnprocessableEntity, id="422"),
        pytest.param(429, ResourceExhausted, id="429-saturated"),
    ],
)
def test_upstream_refusals_keep_their_kind(status: int, cls: type[MagsrlError]) -> None:
    """Pins: every upstream 4xx flattened to one class, or the upstream refusing our own
    credentials reported as the caller's authentication error."""
    assert type(upstream_refusal(status, "no", "p")) is cls


def _app() -> TestClient:
    router = APIRouter()

    @router.get("/raise/{kind}")
    async def boom(kind: str) -> None:
        if kind == "oom":
            raise ResourceExhausted("out of memory loading the adapter")
        if kind == "param":
            raise InvalidInput("bad box", param="boxes[0]")
        if kind == "upstream":
            raise UpstreamError("the judge model's reply was unreadable")
        raise RuntimeError("secret stack detail")

    settings = ServiceSettings(api_key=None)  # whatever the environment says
    return TestClient(
        create_service_app(name="t", settings=settings, description="t", routers=[router]),
        raise_server_exceptions=False,
    )


@pytest.mark.parametrize(
    ("kind", "status", "param"),
    [
        pytest.param("oom", 503, None, id="resource-exhausted"),
        pytest.param("param", 400, "boxes[0]", id="invalid-input-with-param"),
        pytest.param("upstream", 502, None, id="upstream"),
        pytest.param("bug", 500, None, id="unexpected"),
    ],
)
def test_the_edge_renders_the_envelope(kind: str, status: int, param: str | None) -> None:
    """Pins: an error escaping as a stack trace, a lost ``param``, or an envelope without
    its status code and request id."""
    with _app() as client:
        resp = client.get(f"/raise/{kind}")
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["code"] == status
    assert error.get("param") == param
    assert error["request_id"]
    assert "secret stack detail" not in resp.text
