"""What every service shares, checked on the magnifier: auth, probes, metrics, request ids,
and the OpenAPI docs. Real processes over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MAGNIFIER_TEST_ENV, RunningService, photo, png_bytes, start_service

pytestmark = pytest.mark.slow
KEY = "test-secret-key"


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, weights_dir: Path
) -> Iterator[RunningService]:
    env = {
        **MAGNIFIER_TEST_ENV,
        "MAGSRL_WEIGHTS_DIR": str(weights_dir),
        "MAGSRL_PRELOAD": "span-x4",
    }
    service = start_service("magnifier", tmp_path_factory.mktemp("secured"), env, api_key=KEY)
    yield service
    service.supervisor.stop()


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/openapi.json", "/docs"])
def test_probes_and_docs_are_open_with_auth_on(secured: RunningService, path: str) -> None:
    assert httpx.get(secured.url + path).status_code == 200


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        pytest.param({}, "missing API key", id="no-header"),
        pytest.param({"Authorization": "Bearer wrong"}, "invalid API key", id="wrong-key"),
        pytest.param({"Authorization": KEY}, "invalid API key", id="no-bearer-prefix"),
    ],
)
def test_auth_refuses(secured: RunningService, headers: dict[str, str], says: str) -> None:
    resp = httpx.post(
        secured.url + "/v1/images", content=png_bytes(photo("coffee")), headers=headers
    )
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert says in resp.json()["error"]["message"]


def test_auth_accepts_the_key(secured: RunningService) -> None:
    with secured.client() as client:
        resp = client.post(
            "/v1/images", content=png_bytes(photo("coffee")), headers={"Content-Type": "image/png"}
        )
    assert resp.status_code == 200, resp.text


def test_auth_off_needs_no_header(magnifier: RunningService) -> None:
    resp = httpx.get(magnifier.url + "/v1/methods")
    assert resp.status_code == 200


def _counter(text: str, route: str, status: str) -> float:
    pattern = (
        r'magsrl_http_requests_total\{[^}]*method="POST",[^}]*route="'
        + re.escape(route)
        + r'",[^}]*status="'
        + status
        + r'"\} ([0-9.e+]+)'
    )
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests(magnifier_client: httpx.Client) -> None:
    before = magnifier_client.get("/metrics").text
    for _ in range(3):
        magnifier_client.post("/v1/zoom", json={"image": {"id": "0" * 64}, "boxes": [[0, 0, 1, 1]]})
    after = magnifier_client.get("/metrics").text
    assert _counter(after, "/v1/zoom", "404") - _counter(before, "/v1/zoom", "404") == 3
    assert "magsrl_image_cache_lookups_total" in after
    assert "magsrl_sr_batch_size_bucket" in after


def test_request_id_is_echoed_and_in_errors(magnifier_client: httpx.Client) -> None:
    resp = magnifier_client.post("/v1/zoom", json={}, headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    assert resp.json()["error"]["request_id"] == "abc-123"
    minted = magnifier_client.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", minted)


def test_ready_reports_ready(magnifier_client: httpx.Client) -> None:
    assert magnifier_client.get("/ready").json() == {"status": "ready"}


def test_openapi_documents_the_contract(magnifier_client: httpx.Client) -> None:
    spec = magnifier_client.get("/openapi.json").json()
    assert {"/v1/images", "/v1/zoom", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    upload = spec["paths"]["/v1/images"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
