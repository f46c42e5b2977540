"""The policy's image path and its several upstreams (issue 15): a client's JPEG reaches the
upstream as the bytes it sent, no image work blocks the event loop, and the openai engine
routes conversations over two real fake-vLLM processes, one of them killed mid-test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from magsrl.common.errors import BadRequest, InvalidInput
from magsrl.common.images import open_header
from magsrl.engines.openai_upstream import OpenAIEngine
from magsrl.engines.upstream_pool import UpstreamPool
from magsrl.engines.wire_images import passthrough_mime
from magsrl.policy.config import PolicySettings
from magsrl.policy.protocol import ChatCompletionRequest
from magsrl.policy.serving_chat import ChatService
from magsrl.zoom.engine import GenerationRequest, SamplingParams
from tests.fakes.process import FakeUpstream, start_fake_vllm

T = TypeVar("T")
FAKE_FLAGS = ("--logprobs-mode", "processed_logprobs", "--enable-lora")
LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
# Loop lag allowed while one request with two 3.5 MP images is handled. The old path spent
# about 1.2 s encoding one such image as PNG on the loop, and 0.15 s decoding it.
LAG_LIMIT_S = 0.25


# ---- images ----------------------------------------------------------------------------------
def photo_jpeg(width: int = 2160, height: int = 1620, orientation: int = 1, seed: int = 0) -> bytes:
    """A 3.5 MP JPEG with photo-like texture (noise over gradients); ``orientation`` is
    written in its EXIF."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def image_part(data: bytes, label: str = "image/png") -> dict[str, Any]:
    # Labelled PNG on purpose: the policy names the bytes by their real format.
    url = f"data:{label};base64,{base64.b64encode(data).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def chat_request(model: str, *images: bytes, text: str = "What is shown?") -> ChatCompletionRequest:
    content = [*(image_part(d) for d in images), {"type": "text", "text": text}]
    return ChatCompletionRequest(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=3
    )


async def with_loop_lag(work: Awaitable[T], period_s: float = 0.005) -> tuple[T, float]:
    """``work``'s result, and the longest the event loop was late for a heartbeat while it
    ran: how long something blocked the loop."""
    worst = 0.0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(period_s)
            worst = max(worst, time.perf_counter() - started - period_s)

    beating = asyncio.create_task(heartbeat())
    await asyncio.sleep(period_s * 2)
    try:
        result = await work
    finally:
        done.set()
        await beating
    return result, worst


# ---- which bytes pass unchanged, pure ----------------------------------------------------------
def encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (64, 48), 128).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        pytest.param(encoded("JPEG"), "image/jpeg", id="jpeg"),
        pytest.param(encoded("PNG"), "image/png", id="png"),
        pytest.param(encoded("JPEG", "L"), "image/jpeg", id="grey-jpeg"),
        pytest.param(encoded("JPEG")[:-40], None, id="cut-jpeg"),
        pytest.param(encoded("PNG")[:-20], None, id="cut-png"),
        pytest.param(encoded("PNG", "RGBA"), None, id="alpha"),
        pytest.param(encoded("WEBP"), None, id="webp"),
        pytest.param(photo_jpeg(64, 48, orientation=6), None, id="exif-turned"),
    ],
)
def test_passthrough_only_where_the_upstream_sees_the_same_pixels(
    data: bytes, mime: str | None
) -> None:
    """The bugs it pins: forwarding an EXIF-turned JPEG (vLLM does not turn it, magsrl's
    boxes are in the turned frame), an alpha image (its RGB conversion is not pinned), or a
    file cut short (the upstream's error instead of the caller's 400)."""
    assert passthrough_mime(open_header(data), data) == mime


def test_a_cut_jpeg_is_still_the_callers_400() -> None:
    """The bug: with only the header read, a truncated JPEG went to the upstream, whose
    failure came back as a 503 that rollout workers retry forever."""
    settings = PolicySettings(engine="openai", policy_model="m")
    chat = ChatService(OpenAIEngine(settings.engine_settings()), settings)
    with pytest.raises(BadRequest, match="truncated or corrupt"):
        chat.to_engine_request(chat_request("m", photo_jpeg(640, 480)[:-3000]))


# ---- the routing table, pure ----------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pool_routes_to_least_loaded_and_sticks() -> None:
    """The bug: one upstream URL, so a second GPU's engine got no traffic; routed blindly, an
    episode's round 2 would miss the prefix cache its round 1 filled."""
    pool = UpstreamPool(["http://a/v1", "http://b/v1"], sticky_slack=1)
    a, b = pool.upstreams
    first = pool.pick("episode-1")
    assert first is a
    with pool.lease(a):
        assert pool.pick("episode-2") is b  # a is busier
        assert pool.pick("episode-1") is a  # sticky within the slack
        with pool.lease(a):
            # Two more in flight than b: past the slack, the conversation moves.
            assert pool.pick("episode-1") is b
    assert pool.pick("episode-1") is b  # and sticks to where it went


def test_pool_skips_a_down_upstream_until_its_retry_time() -> None:
    """The bug: a dead upstream kept receiving its share of requests (each a 503), or, once
    skipped, was never tried again after it came back."""
    clock = Clock()
    pool = UpstreamPool(["http://a/v1", "http://b/v1"], retry_s=5, clock=clock)
    a, b = pool.upstreams
    pool.mark_down(a, "ConnectError")
    assert [pool.pick(f"k{i}") for i in range(3)] == [b, b, b]
    clock.now += 1
    pool.mark_down(b, "ConnectError")
    # All down: the one due back soonest is tried (the engine checks it first), not none.
    assert pool.pick("k9") is a
    assert pool.pick("k9", exclude=frozenset({a.url})) is b
    assert pool.pick("k9", exclude=frozenset({a.url, b.url})) is None
    clock.now += 5.1
    assert pool.available() == [a, b]  # past their retry time, both count as up again
    with pytest.raises(ValueError, match="twice"):
        UpstreamPool(["http://a/v1", "http://a/v1"])


# ---- one fake vLLM: bytes and the loop ---------------------------------------------------------
@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FakeUpstream]:
    upstream = start_fake_vllm(
        tiny_model_dir, tmp_path_factory.mktemp("fake-io"), *FAKE_FLAGS, env=LORA_ENV
    )
    yield upstream
    upstream.stop()


def chat_for(urls: list[str], model: Path, **extra: Any) -> tuple[OpenAIEngine, ChatService]:
    settings = PolicySettings(engine="openai", upstream_urls=urls, policy_model=str(model), **extra)
    engine = OpenAIEngine(settings.engine_settings())
    return engine, ChatService(engine, settings)


@pytest.mark.slow
def test_client_jpeg_reaches_the_upstream_unchanged(
    fake: FakeUpstream, tiny_model_dir: Path
) -> None:
    """The bug: the policy decoded every image and re-encoded it as PNG for the upstream
    (1.2 s for 3.5 MP), and called a JPEG whatever the client's data URL said. A JPEG the
    upstream reads as magsrl does goes through byte for byte, as image/jpeg; one whose EXIF
    turns it (vLLM does not turn it) is turned here and sent as PNG."""
    plain, turned = photo_jpeg(), photo_jpeg(orientation=6, seed=1)

    async def run() -> list[dict[str, str]]:
        engine, chat = chat_for([f"{fake.url}/v1"], tiny_model_dir)
        try:
            assert await engine.ready() is None
            await chat.create(chat_request(str(tiny_model_dir), plain, turned))
            return fake.requests()[-1]["images"]
        finally:
            await engine.close()

    first, second = asyncio.run(run())
    assert first == {"mime": "image/jpeg", "sha256": hashlib.sha256(plain).hexdigest()}
    assert second["mime"] == "image/png"


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_large_images_never_block_the_event_loop(
    fake: FakeUpstream, tiny_model_dir: Path, stream: bool
) -> None:
    """The bug: base64 and image decoding, EXIF turning and PNG encoding of every image ran
    on the policy's event loop, so one 3.5 MP request stalled every other request and
    stream of the process for over a second."""
    images = (photo_jpeg(seed=2), photo_jpeg(orientation=6, seed=3))

    async def run() -> float:
        engine, chat = chat_for([f"{fake.url}/v1"], tiny_model_dir)
        try:
            assert await engine.ready() is None
            req = chat_request(str(tiny_model_dir), *images)
            if stream:

                async def consume() -> list[str]:
                    return [piece async for piece in chat.stream(req)]

                events, lag = await with_loop_lag(consume())
                assert events[-1] == "data: [DONE]\n\n" and "error" not in events[-2]
            else:
                _, lag = await with_loop_lag(chat.create(req))
            return lag
        finally:
            await engine.close()

    lag = asyncio.run(run())
    assert lag < LAG_LIMIT_S, f"the event loop was blocked for {lag * 1000:.0f} ms"


# ---- two fake vLLMs: routing, adapters, one killed --------------------------------------------
def request_for(question: str, *later: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(
        messages=[{"role": "user", "content": question}, *later],
        sampling=SamplingParams(max_tokens=2),
    )


ROUND_2 = (
    {"role": "assistant", "content": "Let me look."},
    {"role": "user", "content": "Now answer."},
)


@pytest.mark.slow
def test_two_upstreams_route_fan_out_adapters_and_survive_one_killed(
    tmp_path: Path, tiny_model_dir: Path, fake: FakeUpstream
) -> None:
    """The bugs: one upstream URL only; adapters loaded on one engine of several (requests
    for them then 404 on the others); a dead engine failing its share of the rollouts. Two
    real fake-vLLM processes; the second is killed mid-test."""
    second = start_fake_vllm(tiny_model_dir, tmp_path, *FAKE_FLAGS, env=LORA_ENV)
    fakes = {f"{fake.url}/v1": fake, f"{second.url}/v1": second}
    adapter = make_adapter(tmp_path, tiny_model_dir)

    def counts() -> dict[str, int]:
        return {url: len(f.requests()) for url, f in fakes.items() if f.process.poll() is None}

    async def run() -> None:
        engine, _ = chat_for(list(fakes), tiny_model_dir, upstream_retry_s=0.5)
        try:
            assert await engine.ready() is None
            # Adapters go to both; one refusal (a bad path) leaves neither with it.
            await engine.load_adapter("v1", str(adapter))
            for f in fakes.values():
                assert "v1" in [m["id"] for m in _models(f)]
            with pytest.raises(InvalidInput, match=r"upstream http://127\.0\.0\.1:\d+/v1"):
                await engine.load_adapter("bad", str(tmp_path / "missing"))
            assert all("bad" not in [m["id"] for m in _models(f)] for f in fakes.values())

            # Concurrent conversations spread over both (fewest in flight).
            before = counts()
            questions = [f"Question {i}?" for i in range(6)]
            await asyncio.gather(*(engine.generate(request_for(q)) for q in questions))
            spread = {u: n - before[u] for u, n in counts().items()}
            assert all(n >= 2 for n in spread.values()), spread

            # Round 2 of a conversation goes where round 1 went (its prefix cache).
            homes = {}
            for q in ("Sticky A?", "Sticky B?"):
                before = counts()
                await engine.generate(request_for(q))
                (homes[q],) = [u for u, n in counts().items() if n > before[u]]
                before = counts()
                await engine.generate(request_for(q, *ROUND_2))
                assert [u for u, n in counts().items() if n > before[u]] == [homes[q]]

            # Kill the second engine: conversations that lived there move, streams too.
            second.process.kill()
            second.process.wait()
            on_second = [q for q, u in homes.items() if u == f"{second.url}/v1"] or ["New?"]
            result = [item async for item in engine.stream(request_for(on_second[0], *ROUND_2))][-1]
            assert result.completions  # type: ignore[union-attr]
            await asyncio.gather(*(engine.generate(request_for(q)) for q in questions))
            assert await engine.ready() is None  # one is enough to serve
            dead = engine.pool.upstreams[1]
            assert dead.problem and not dead.up(time.monotonic())
            # An adapter loaded while it is down lands on the live one; it is not lost.
            await engine.load_adapter("v2", str(adapter))
            assert "v2" in [m["id"] for m in _models(fake)]
            await asyncio.sleep(0.6)  # past its retry time: checked again, still down
            await engine.generate(request_for("After the retry time?"))
            assert dead.problem is not None
            await engine.unload_adapter("v1")
            assert "v1" not in [m["id"] for m in _models(fake)]
        finally:
            await engine.close()

    try:
        asyncio.run(run())
    finally:
        second.stop()


def _models(upstream: FakeUpstream) -> list[dict[str, Any]]:
    import httpx

    return httpx.get(f"{upstream.url}/v1/models").json()["data"]


def make_adapter(tmp: Path, model_dir: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    from magsrl.models.loading import load_model

    model = get_peft_model(
        load_model(model_dir), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    out = tmp / "adapter"
    model.save_pretrained(out)
    return out
