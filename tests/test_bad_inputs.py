"""Every hostile or malformed request of issue 16, table-driven, against the in-process apps:
each gets the right 4xx (or 502) with a message that says what to fix, and the same service
answers a good request right after. Batches stay isolated: a bad request fails alone, and no
error quotes another request. Requests are bounded: the zoom limits answer 413 naming the
setting, and a slow-drip image URL is cut at a total deadline.

Run: OMP_NUM_THREADS=1 pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from magsrl.common.image_source import host_allowed
from magsrl.judge.app import create_app as judge_app
from magsrl.judge.config import JudgeSettings
from magsrl.magnifier.app import create_app as magnifier_app
from magsrl.magnifier.config import MagnifierSettings
from magsrl.policy.app import create_app as policy_app
from magsrl.policy.config import PolicySettings
from magsrl.zoom.engine import GenerationRequest, SamplingParams

ALLOW = ["127.0.0.1"]
KEY = "test-key-123"


# ---- images ------------------------------------------------------------------------------
def png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


B64 = base64.b64encode(png(96, 64)).decode()
DATA_URL = "data:image/png;base64," + B64
LONG_THIN_URL = "data:image/png;base64," + base64.b64encode(png(60000, 1)).decode()
SEED_2_64 = 2**64
# A flat 1024x1024 photo stand-in: compresses to almost nothing, so the request is small and
# only the asked-for output is large.
_flat = io.BytesIO()
Image.new("RGB", (1024, 1024), (90, 120, 150)).save(_flat, "PNG")
FLAT_1024 = base64.b64encode(_flat.getvalue()).decode()


def nested(depth: int) -> dict[str, Any]:
    """Tool parameters whose schema nests ``depth`` objects deep."""
    inner: dict[str, Any] = {}
    root = {"type": "object", "properties": {"a": inner}}
    for _ in range(depth):
        inner["items"] = {}
        inner = inner["items"]
    return root


def deep_tools(depth: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": nested(depth)}}]


# ---- apps --------------------------------------------------------------------------------
def send(client: TestClient, method: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    """JSON the way a hostile client writes it: NaN and lone surrogates are allowed here."""
    if body is None:
        return client.request(method, path, **kwargs)
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return client.request(method, path, content=json.dumps(body), headers=headers, **kwargs)


def ready(client: TestClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").text
        time.sleep(0.05)


@pytest.fixture(scope="module")
def magnifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # No SR weights preloaded: every case here is refused before a network would run, and
    # the good request uses bicubic. The limits are the defaults, so the defaults are tested.
    settings = MagnifierSettings(
        preload=[],
        url_allowlist=ALLOW,
        url_timeout_s=0.5,
        weights_dir=tmp_path_factory.mktemp("weights"),
    )
    with TestClient(magnifier_app(settings), raise_server_exceptions=False) as client:
        ready(client)
        yield client


@pytest.fixture(scope="module")
def judge() -> Iterator[TestClient]:
    settings = JudgeSettings(cache=False, url_allowlist=ALLOW, url_timeout_s=0.5)
    with TestClient(judge_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> Iterator[TestClient]:
    settings = PolicySettings(
        policy_model=str(tiny_model_dir),
        url_allowlist=ALLOW,
        url_timeout_s=0.5,
        max_context=512,
        batch_wait_ms=30,
        magnifier_url="http://127.0.0.1:9",  # nothing listens: no case here reaches it
        magnifier_down="continue",
        torch_threads=1,
    )
    with TestClient(policy_app(settings), raise_server_exceptions=False) as client:
        ready(client)
        yield client


def model_name(client: TestClient) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


# ---- what a good request looks like, per service -----------------------------------------
def good_zoom(client: TestClient) -> None:
    body = {"image": {"b64": B64}, "boxes": [[0, 0, 40, 40]], "method": "bicubic"}
    resp = send(client, "POST", "/v1/zoom", body)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.json()["crops"][0]["width"] > 0


def good_score(client: TestClient) -> None:
    resp = send(client, "POST", "/v1/score", {"image": {"b64": B64}, "question": "what?"})
    assert resp.status_code == 200, resp.text
    assert 1 <= resp.json()["zoom_score"] <= 10


def good_chat(client: TestClient) -> None:
    body = {
        "model": model_name(client),
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    }
    resp = send(client, "POST", "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"


GOOD: dict[str, Callable[[TestClient], None]] = {
    "magnifier": good_zoom,
    "judge": good_score,
    "policy": good_chat,
}


def assert_error(resp: httpx.Response, status: int, says: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:500]
    error = resp.json()["error"]
    assert error["type"] and error["message"], error
    assert "Traceback" not in resp.text
    assert says.lower() in error["message"].lower(), error["message"]
    return error


def chat(content: Any, role: str = "user", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content}], "max_tokens": 2, **extra}


IMAGE_AND_TEXT = [
    {"type": "image_url", "image_url": {"url": DATA_URL}},
    {"type": "text", "text": "what is this?"},
]
BAD_URL = "http://[::1/x"
BAD_PORT_URL = "http://127.0.0.1:abc/x"
BOX = [[0, 0, 40, 40]]
ZOOM = {"boxes": BOX, "method": "bicubic"}  # no SR weights needed

# service, path, body, status, what the message says
CASES = [
    # -- image.url that urlsplit refuses (was a 500 at all four endpoints) --
    pytest.param(
        "magnifier", "/v1/zoom", {"image": {"url": BAD_URL}, **ZOOM}, 400, "malformed",
        id="zoom-ipv6-bracket-url",
    ),
    pytest.param(
        "judge", "/v1/score", {"image": {"url": BAD_URL}, "question": "q"}, 400, "malformed",
        id="score-ipv6-bracket-url",
    ),
    pytest.param(
        "policy", "/answer", {"image": {"url": BAD_URL}, "question": "q"}, 400, "malformed",
        id="answer-ipv6-bracket-url",
    ),
    pytest.param(
        "policy", "/v1/viewer/crops", {"image": {"url": BAD_URL}, "boxes": BOX}, 400,
        "malformed", id="viewer-crops-ipv6-bracket-url",
    ),
    # -- a port that is not a number, with an allowlist that lets the host through --
    pytest.param(
        "magnifier", "/v1/zoom", {"image": {"url": BAD_PORT_URL}, **ZOOM}, 400,
        "malformed", id="zoom-port-not-a-number",
    ),
    pytest.param(
        "judge", "/v1/score", {"image": {"url": BAD_PORT_URL}, "question": "q"}, 400,
        "malformed", id="score-port-not-a-number",
    ),
    # -- judge boxes: NaN, strings, and a box the magnifier would refuse --
    pytest.param(
        "judge", "/v1/score",
        {"image": {"b64": B64}, "question": "q", "bbox": [0, 0, 10, float("nan")]},
        422, "finite", id="judge-bbox-nan",
    ),
    pytest.param(
        "judge", "/v1/score", {"image": {"b64": B64}, "question": "q", "bbox": [0, 0, "9", 9]},
        422, "valid number", id="judge-bbox-string",
    ),
    pytest.param(
        "judge", "/v1/score",
        {"image": {"b64": B64}, "question": "q", "bbox": [1000, 1000, 1200, 1200]},
        422, "outside", id="judge-bbox-outside-image",
    ),
    # -- magnifier boxes given as strings (docs/magnifier.md says they are refused) --
    pytest.param(
        "magnifier", "/v1/zoom", {"image": {"b64": B64}, "boxes": [["0", 0, 40, 40]]}, 422,
        "valid number", id="zoom-box-string",
    ),
    # -- bounded work per zoom request (413 naming the setting) --
    pytest.param(
        "magnifier", "/v1/zoom",
        {"image": {"b64": B64}, "boxes": [[0, 0, 40, 40]] * 9, "method": "bicubic"},
        413, "MAGSRL_MAX_BOXES", id="zoom-too-many-boxes",
    ),
    pytest.param(
        "magnifier", "/v1/zoom",
        {
            "image": {"b64": FLAT_1024}, "boxes": [[0, 0, 1024, 1024]], "method": "bicubic",
            "max_pixels": 4096 * 4096,
        },
        413, "MAGSRL_MAX_TOTAL_PIXELS", id="zoom-16mp-crop",
    ),
    pytest.param(
        "magnifier", "/v1/zoom",
        {
            "image": {"b64": FLAT_1024}, "boxes": [[0, 0, 512, 512], [512, 0, 1024, 512]],
            "method": "bicubic", "max_pixels": 2048 * 2048,
        },
        413, "MAGSRL_MAX_TOTAL_PIXELS", id="zoom-two-4mp-crops",
    ),
    # -- seeds past int64 (torch.manual_seed overflowed: a 500, or a cut stream) --
    pytest.param(
        "policy", "/v1/chat/completions", chat("hi", seed=SEED_2_64), 422, "seed",
        id="chat-seed-2-64",
    ),
    pytest.param(
        "policy", "/v1/chat/completions", chat("hi", seed=SEED_2_64, stream=True), 422, "seed",
        id="chat-seed-2-64-stream",
    ),
    pytest.param(
        "policy", "/answer", {"image": {"b64": B64}, "question": "q", "seed": SEED_2_64}, 422,
        "seed", id="answer-seed-2-64",
    ),
    # -- chat content the template or processor cannot take --
    pytest.param(
        "policy", "/v1/chat/completions", chat(IMAGE_AND_TEXT, role="system"), 400,
        "images go in user messages", id="chat-image-in-system",
    ),
    pytest.param(
        "policy", "/v1/chat/completions", chat(IMAGE_AND_TEXT, role="assistant"), 400,
        "images go in user messages", id="chat-image-in-assistant",
    ),
    pytest.param(
        "policy", "/v1/chat/completions",
        chat([{"type": "image_url", "image_url": {"url": LONG_THIN_URL}}]), 400,
        "aspect ratio", id="chat-image-60000x1",
    ),
    pytest.param(
        "policy", "/v1/chat/completions", chat("\ud800"), 422, "surrogate",
        id="chat-lone-surrogate",
    ),
    pytest.param(
        "policy", "/answer",
        {"image": {"b64": LONG_THIN_URL.split(",")[1]}, "question": "q", "zoom": "off"}, 400,
        "aspect ratio", id="answer-image-60000x1",
    ),
    pytest.param(
        "policy", "/answer",
        {"image": {"b64": B64}, "question": "q", "options": ["a", "\ud800"], "zoom": "off"},
        422, "unicode", id="answer-option-lone-surrogate",
    ),
    pytest.param(
        "policy", "/v1/chat/completions",
        chat("hi", tools=deep_tools(300)),
        422, "nested deeper", id="chat-tool-params-300-deep",
    ),
    pytest.param(
        "policy", "/v1/chat/completions",
        chat("hi", tools=deep_tools(900)),
        422, "nested deeper", id="chat-tool-params-900-deep",
    ),
    # -- adapter paths: only under the policy's roots (runs_dir, MAGSRL_WEIGHTS_ROOTS) --
    pytest.param(
        "policy", "/v1/adapters", {"name": "a", "path": "/" + "x" * 5000}, 422, "4096",
        id="adapter-path-5000-chars",
    ),
    pytest.param(
        "policy", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/" + "x" * 5000},
        400, "MAGSRL_WEIGHTS_ROOTS", id="lora-path-5000-chars",
    ),
    pytest.param(
        "policy", "/v1/adapters", {"name": "a", "path": "/etc"}, 400, "MAGSRL_WEIGHTS_ROOTS",
        id="adapter-path-outside-the-roots",
    ),
    pytest.param(
        "policy", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/proc/self"}, 400,
        "MAGSRL_WEIGHTS_ROOTS", id="lora-path-outside-the-roots",
    ),
    pytest.param(
        "policy", "/v1/adapters", {"name": "a", "path": "/tmp/a\x00b"}, 400,
        "MAGSRL_WEIGHTS_ROOTS", id="adapter-path-nul-byte",
    ),
    pytest.param(
        "policy", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "runs/x"}, 400,
        "absolute", id="lora-path-relative",
    ),
    pytest.param(
        "policy", "/v1/weights", {"path": "/tmp/a\x00b"}, 400, "MAGSRL_WEIGHTS_ROOTS",
        id="weights-path-nul-byte",
    ),
    pytest.param(
        "policy", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/\ud800"}, 400,
        "MAGSRL_WEIGHTS_ROOTS", id="lora-path-lone-surrogate",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("service", "path", "body", "status", "says"), CASES)
def test_bad_input_gets_a_4xx_then_a_good_request_works(
    request: pytest.FixtureRequest,
    service: str,
    path: str,
    body: dict[str, Any],
    status: int,
    says: str,
) -> None:
    """Each of issue 16's 500s (and the unbounded zooms) is now a 4xx that says what to fix,
    and the service is still serving."""
    client: TestClient = request.getfixturevalue(service)
    if path == "/v1/chat/completions":
        body = {"model": model_name(client), **body}
    assert_error(send(client, "POST", path, body), status, says)
    GOOD[service](client)


# ---- batches: one bad item fails alone ---------------------------------------------------
def test_score_batch_with_a_bad_url_keeps_the_good_scores(judge: TestClient) -> None:
    """Bug: one `http://[::1/x` item turned /v1/score/batch into a 500 for every item."""
    items = [
        {"image": {"b64": B64}, "question": "q"},
        {"image": {"url": BAD_URL}, "question": "q"},
        {"image": {"b64": B64}, "question": "q", "bbox": [0, 0, 20, 20]},
    ]
    resp = send(judge, "POST", "/v1/score/batch", {"items": items})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert results[0]["score"] and results[2]["score"]
    assert results[1]["score"] is None
    assert "malformed" in results[1]["error"]["message"]


def test_bad_chat_request_batched_with_good_ones_fails_alone(policy: TestClient) -> None:
    """Bug: an image in a system message, batched with 4 good requests, got all 5 a 500."""
    name = model_name(policy)
    good = {"model": name, **chat(IMAGE_AND_TEXT)}
    bad = {"model": name, **chat(IMAGE_AND_TEXT, role="system")}
    with ThreadPoolExecutor(5) as pool:
        futures = [
            pool.submit(send, policy, "POST", "/v1/chat/completions", body)
            for body in [good, good, bad, good, good]
        ]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 200, 400, 200, 200]


def _engine_batch(policy: TestClient, requests: list[GenerationRequest]) -> list[Any]:
    """Sends ``requests`` to the policy's engine at once (one batch), on the app's loop."""
    engine = policy.app.state.engine  # type: ignore[attr-defined]

    async def together() -> list[Any]:
        return await asyncio.gather(*(engine.generate(r) for r in requests), return_exceptions=True)

    return policy.portal.call(together)  # type: ignore[union-attr]


def _user(text: str, image: bool = False, role: str = "user") -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image:
        picture = Image.open(io.BytesIO(png(64, 48))).convert("RGB")
        content.insert(0, {"type": "image", "image": picture})
    return {"role": role, "content": content}


def test_engine_batch_isolates_a_request_it_cannot_process(policy: TestClient) -> None:
    """Bug: one request that broke the processor (an image in a system message reaching the
    engine) failed every request of its batch; now it fails alone."""
    sampling = SamplingParams(max_tokens=2, temperature=0.0)
    good = GenerationRequest(messages=[_user("look", image=True)], sampling=sampling)
    bad = GenerationRequest(messages=[_user("look", image=True, role="system")], sampling=sampling)
    results = _engine_batch(policy, [good, good, bad, good, good])
    assert isinstance(results[2], Exception)
    for i in (0, 1, 3, 4):
        assert not isinstance(results[i], BaseException), results[i]
        assert results[i].completions


def test_context_errors_never_quote_another_request(policy: TestClient) -> None:
    """Bug: a 27-token request with max_tokens 8000 was refused quoting another client's
    3,027-token prompt, because the batch's longest prompt was checked for everyone."""
    sampling = SamplingParams(max_tokens=300, temperature=0.0)
    short = GenerationRequest(messages=[_user("hi")], sampling=sampling)
    long = GenerationRequest(messages=[_user("zebra " * 150)], sampling=sampling)
    (alone,) = _engine_batch(policy, [long])
    assert isinstance(alone, Exception), "the long prompt must not fit with max_tokens=300"
    short_result, long_result = _engine_batch(policy, [short, long])
    assert not isinstance(short_result, BaseException), short_result
    assert str(long_result) == str(alone)  # its own prompt's length, nobody else's
    assert str(short_result.prompt_tokens) not in str(long_result)


def test_stream_refused_by_the_engine_ends_with_an_error_event(policy: TestClient) -> None:
    """Bug: an error raised after a stream's 200 (here the engine's context check) cut the
    connection; now it arrives as an error event that names the request's own numbers."""
    body = {"model": model_name(policy), **chat("hi", stream=True)}
    body["max_tokens"] = 100_000
    resp = send(policy, "POST", "/v1/chat/completions", body)
    assert resp.status_code == 200
    events = [line[len("data: ") :] for line in resp.text.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 400 and "max_tokens=100000" in error["message"], error
    good_chat(policy)


# ---- upstream engines that answer garbage: 502, and an error event when streaming --------
class FakeUpstream:
    """An OpenAI-compatible upstream that answers what a test sets in ``mode``."""

    def __init__(self) -> None:
        self.mode = "good"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "up"}]})
        stream = json.loads(request.content).get("stream")
        if self.mode == "html":
            return httpx.Response(200, text="<html>gateway hiccup</html>")
        if self.mode == "no-choices":
            if stream:
                return httpx.Response(200, text='data: {"id": "x"}\n\ndata: [DONE]\n\n')
            return httpx.Response(200, json={"id": "x", "object": "chat.completion"})
        if stream:
            chunk = {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
            return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")
        message = {"role": "assistant", "content": "ok"}
        body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        return httpx.Response(200, json={**body, "usage": {"prompt_tokens": 3}})


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[TestClient, FakeUpstream]]:
    # The fake's model card names no family and no readable root, as vLLM serving a Hub id
    # with no shared cache: the deployment says the family.
    settings = PolicySettings(
        engine="openai",
        policy_model="up",
        upstream_url="http://upstream.invalid/v1",
        policy_family="qwen2_5_vl",
    )
    app: FastAPI = policy_app(settings)
    upstream = FakeUpstream()
    with TestClient(app, raise_server_exceptions=False) as client:
        engine = app.state.engine
        real = engine.http
        engine.http = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
        client.portal.call(real.aclose)  # type: ignore[union-attr]
        ready(client)
        yield client, upstream
        client.portal.call(engine.http.aclose)  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["html", "no-choices"])
def test_upstream_garbage_is_a_502(proxied: tuple[TestClient, FakeUpstream], mode: str) -> None:
    """Bug: an upstream answering non-JSON or JSON without `choices` gave a 500."""
    client, upstream = proxied
    upstream.mode = mode
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}
    try:
        assert_error(send(client, "POST", "/v1/chat/completions", body), 502, "upstream")
    finally:
        upstream.mode = "good"
    resp = send(client, "POST", "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "ok"


@pytest.mark.parametrize("mode", ["html", "no-choices"])
def test_upstream_garbage_mid_stream_is_an_error_event(
    proxied: tuple[TestClient, FakeUpstream], mode: str
) -> None:
    """Bug: with `stream: true`, the same upstream garbage cut the connection after the 200;
    now the stream ends with an error event and [DONE]."""
    client, upstream = proxied
    upstream.mode = mode
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        resp = send(client, "POST", "/v1/chat/completions", body)
    finally:
        upstream.mode = "good"
    assert resp.status_code == 200
    events = [line[len("data: ") :] for line in resp.text.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 502 and "upstream" in error["message"]
    resp = send(client, "POST", "/v1/chat/completions", body)
    assert '"content":"ok"' in resp.text and resp.text.endswith("data: [DONE]\n\n")


# ---- response size, auth, allowlist ports, slow drip ---------------------------------------
def test_zoom_response_over_the_byte_limit_is_a_413(tmp_path: Path) -> None:
    """A zoom whose encoded crops exceed MAGSRL_MAX_RESPONSE_BYTES is refused, not sent."""
    settings = MagnifierSettings(preload=[], weights_dir=tmp_path, max_response_bytes=20_000)
    with TestClient(magnifier_app(settings)) as client:
        body = {"image": {"b64": B64}, "boxes": [[0, 0, 64, 64]], "method": "bicubic"}
        assert_error(send(client, "POST", "/v1/zoom", body), 413, "MAGSRL_MAX_RESPONSE_BYTES")
        body["max_pixels"] = 64 * 64
        body["format"] = "jpeg"
        assert send(client, "POST", "/v1/zoom", body).status_code == 200


def test_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    """Bug: `authorization: bearer KEY` (lowercase scheme) got 401; RFC 7235 section 2.1
    makes the scheme name case-insensitive."""
    settings = MagnifierSettings(preload=[], weights_dir=tmp_path, api_key=KEY)
    with TestClient(magnifier_app(settings)) as client:
        for header in (f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}"):
            assert client.get("/v1/methods", headers={"authorization": header}).status_code == 200
        for header in (f"Basic {KEY}", "Bearer wrong", KEY, ""):
            resp = client.get("/v1/methods", headers={"authorization": header})
            assert resp.status_code == 401, header


@pytest.mark.parametrize(
    ("host", "port", "allowlist", "allowed"),
    [
        pytest.param("example.com", 443, ["example.com"], True, id="no-port-any-port"),
        pytest.param("example.com", 8443, ["example.com:443"], False, id="other-port"),
        pytest.param("example.com", 443, ["example.com:443"], True, id="same-port"),
        pytest.param("a.example.com", 80, ["*.example.com:80"], True, id="wildcard-port"),
        pytest.param("::1", 8080, ["[::1]:8080"], True, id="ipv6-port"),
        pytest.param("::1", 8081, ["[::1]:8080"], False, id="ipv6-other-port"),
        pytest.param("example.com", 80, ["example.com:http"], False, id="bad-entry-port"),
    ],
)
def test_allowlist_entries_may_pin_a_port(
    host: str, port: int, allowlist: list[str], allowed: bool
) -> None:
    """Bug: the allowlist ignored ports; `host:port` entries now allow only that port."""
    assert host_allowed(host, allowlist, port) is allowed


class _Drip(BaseHTTPRequestHandler):
    """Sends a valid header, then one byte every 0.2 s for a minute: never idle long enough
    for a per-read timeout."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "300")
        self.end_headers()
        try:
            for _ in range(300):
                self.wfile.write(b"\x00")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up, as it should

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def drip_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/drip.png"
    server.shutdown()
    server.server_close()


def test_slow_drip_url_is_cut_at_the_total_deadline(
    magnifier: TestClient, judge: TestClient, drip_url: str
) -> None:
    """Bug: a URL dripping a byte at a time held a request 160 s (the timeout was per read);
    MAGSRL_URL_TIMEOUT_S (0.5 s here) now bounds the whole fetch."""
    for client, path, body in [
        (magnifier, "/v1/zoom", {"image": {"url": drip_url}, **ZOOM}),
        (judge, "/v1/score", {"image": {"url": drip_url}, "question": "q"}),
    ]:
        started = time.monotonic()
        assert_error(send(client, "POST", path, body), 400, "MAGSRL_URL_TIMEOUT_S")
        assert time.monotonic() - started < 5.0


def test_allowlist_port_is_enforced_on_fetch(tmp_path: Path, drip_url: str) -> None:
    """An allowlist entry naming another port refuses the URL before anything is fetched;
    one naming the URL's port lets the fetch go ahead (here to the drip, cut at 0.5 s)."""
    port = httpx.URL(drip_url).port
    body = {"image": {"url": drip_url}, **ZOOM}
    for entry, says in [("127.0.0.1:1", "not in the URL allowlist"), (f"127.0.0.1:{port}", "took")]:
        settings = MagnifierSettings(
            preload=[], weights_dir=tmp_path, url_allowlist=[entry], url_timeout_s=0.5
        )
        with TestClient(magnifier_app(settings)) as client:
            assert_error(send(client, "POST", "/v1/zoom", body), 400, says)
