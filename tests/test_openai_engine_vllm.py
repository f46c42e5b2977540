"""The policy's ``openai`` engine against the vLLM-faithful fake upstream, a real process
(tests/fakes/vllm_server.py): the engine alone, then ``/answer`` and a rollout job through a
real policy process with ``MAGSRL_ENGINE=openai``, with exact token ids end to end."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from magsrl.clients.magnifier import MagnifierClient
from magsrl.common.coords import Convention
from magsrl.engines.openai_upstream import OpenAIEngine
from magsrl.engines.upstream_text import rebuilt_text
from magsrl.policy.config import PolicySettings
from magsrl.proto.tools import zoom_tool
from magsrl.zoom.boxes import original_slot, to_original_crop
from magsrl.zoom.engine import GenerationRequest, SamplingParams
from magsrl.zoom.families import FAMILIES, resized_size
from tests.conftest import RunningService, photo, png_bytes, start_policy
from tests.fakes.process import FakeUpstream, start_fake_vllm

pytestmark = pytest.mark.slow

SERVE_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
CALL = '<tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": [10,20,30,40]}}\n</tool_call>'
# What vLLM's hermes parser takes apart: text after a call, two calls with no newline between
# them, and a last call left open when generation ended.
TOOL_TURN = (
    f"Look closer.\n{CALL}{CALL} and then"
    + ' <tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": [1,2,3,4]}}'
)


@pytest.fixture(scope="module")
def budget(tiny_model_dir: Path) -> int:
    """One pixel budget for the engine's processor and the policy's frame (issue 13, point 1)."""
    from magsrl.models.loading import load_processor

    return load_processor(tiny_model_dir).pixel_bounds()[1]


@pytest.fixture(scope="module")
def fake(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, budget: int
) -> Iterator[FakeUpstream]:
    upstream = start_fake_vllm(
        tiny_model_dir,
        tmp_path_factory.mktemp("fake-vllm"),
        *SERVE_FLAGS,
        "--logprobs-mode",
        "processed_logprobs",
        "--mm-processor-kwargs",
        f'{{"max_pixels": {budget}}}',
        "--limit-mm-per-prompt",
        '{"image": 5, "video": 0}',
        "--enable-lora",
        env=LORA_ENV,
    )
    yield upstream
    upstream.stop()


def engine_for(upstream: FakeUpstream, model: Path, **extra: Any) -> OpenAIEngine:
    settings = PolicySettings(
        engine="openai", upstream_url=f"{upstream.url}/v1", policy_model=str(model), **extra
    )
    return OpenAIEngine(settings.engine_settings())


def tokenizer(model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model))


def scripted_ids(model: Path, text: str) -> list[int]:
    tok = tokenizer(model)
    return [*tok.encode(text, add_special_tokens=False), tok.convert_tokens_to_ids("<|im_end|>")]


def test_engine_refuses_an_upstream_in_raw_logprobs_mode(
    tmp_path: Path, tiny_model_dir: Path, fake: FakeUpstream
) -> None:
    """The bug (issue 13, point 2): vLLM's default raw_logprobs are taken before temperature,
    so the learner's ratio starts off-policy at T != 1, silently. The engine measures the
    upstream's mode at start and is not ready until it matches the setting."""
    raw = start_fake_vllm(tiny_model_dir, tmp_path, *SERVE_FLAGS)
    try:

        async def readiness(upstream: FakeUpstream) -> str | None:
            engine = engine_for(upstream, tiny_model_dir)
            try:
                return await engine.ready()
            finally:
                await engine.close()

        problem = asyncio.run(readiness(raw))
        assert problem is not None and "--logprobs-mode processed_logprobs" in problem
        assert asyncio.run(readiness(fake)) is None
    finally:
        raw.stop()


def tool_request(**sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=[{"role": "user", "content": "Where is the sign?"}],
        sampling=SamplingParams(max_tokens=200, **sampling),
        tools=[zoom_tool()],
    )


def test_engine_keeps_the_exact_text_of_a_parsed_tool_call_turn(
    fake: FakeUpstream, tiny_model_dir: Path
) -> None:
    """The bug (issue 13, point 3): vLLM's hermes parser returns only the content before the
    first call plus re-serialised calls, and the engine rebuilt the turn from them, so round
    2 and the rewards saw text the model never wrote. The engine now decodes the choice's
    token ids through the upstream, and also fills top_logprobs (point 8)."""

    async def run() -> Any:
        engine = engine_for(fake, tiny_model_dir)
        try:
            fake.script(TOOL_TURN)
            return await engine.generate(tool_request(logprobs=True, top_logprobs=2))
        finally:
            await engine.close()

    result = asyncio.run(run())
    (completion,) = result.completions
    assert completion.text == TOOL_TURN
    assert completion.token_ids == scripted_ids(tiny_model_dir, TOOL_TURN)
    assert completion.top_logprobs is not None
    assert all(len(step) == 2 for step in completion.top_logprobs)
    assert completion.top_logprobs[0][0][0] == completion.tokens[0]  # sampled token first


def test_engine_without_detokenize_reads_the_logprob_tokens(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """An upstream with no /detokenize (the rollout workers' upstream is a magsrl policy):
    the turn is read from the log-prob tokens when they were asked for (the workers always
    ask), and only without them falls back to the parsed form, which loses the text after
    the first call, as vLLM's parser does."""
    upstream = start_fake_vllm(
        tiny_model_dir, tmp_path, *SERVE_FLAGS, "--logprobs-mode", "processed_logprobs",
        "--no-detokenize",
    )  # fmt: skip

    async def run() -> tuple[str, str]:
        engine = engine_for(upstream, tiny_model_dir)
        try:
            upstream.script(TOOL_TURN, TOOL_TURN)
            with_tokens = await engine.generate(tool_request(logprobs=True))
            without = await engine.generate(tool_request())
            return with_tokens.completions[0].text, without.completions[0].text
        finally:
            await engine.close()

    try:
        with_tokens, without = asyncio.run(run())
    finally:
        upstream.stop()
    assert with_tokens == TOOL_TURN
    args = ['{"bbox_2d": [10, 20, 30, 40]}'] * 2 + ['{"bbox_2d": [1, 2, 3, 4]}']
    assert without == rebuilt_text("Look closer.\n", [("zoom", a) for a in args])


def test_engine_stream_keeps_prompt_ids_and_the_whole_turn(
    fake: FakeUpstream, tiny_model_dir: Path
) -> None:
    """The bug (issue 13, point 8): the streaming path dropped vLLM's first-chunk
    prompt_token_ids, and streamed only the parser's content, losing the calls."""

    async def run() -> tuple[str, Any, Any]:
        engine = engine_for(fake, tiny_model_dir)
        try:
            fake.script(TOOL_TURN)
            text, result = "", None
            async for item in engine.stream(tool_request()):
                if hasattr(item, "completions"):
                    result = item
                else:
                    text += item.text
            fake.script(TOOL_TURN)
            once = await engine.generate(tool_request())
            return text, result, once
        finally:
            await engine.close()

    text, result, once = asyncio.run(run())
    assert text == TOOL_TURN == result.completions[0].text
    assert result.prompt_token_ids and result.prompt_token_ids == once.prompt_token_ids
    assert result.completions[0].token_ids == scripted_ids(tiny_model_dir, TOOL_TURN)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from magsrl.models.loading import load_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / "v1"
    get_peft_model(load_model(tiny_model_dir), config).save_pretrained(out)
    return out


def test_engine_lora_errors_are_the_callers(
    fake: FakeUpstream, tiny_model_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    """vLLM answers a load of a path with no adapter with 404 NotFoundError, and a rank over
    --max-lora-rank with 500 (tests/test_vllm_fake.py pins both). The bug: the engine turned
    them into "model not found" and "upstream unavailable"; they are the caller's 400s, and
    a vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING (no route) says so."""
    from magsrl.common.errors import BadRequest, ServiceUnavailable

    async def run(upstream: FakeUpstream) -> list[Any]:
        engine = engine_for(upstream, tiny_model_dir)
        outcomes: list[Any] = []
        try:
            for name, path in (("v1", adapter), ("v1", adapter), ("v2", tmp_path)):
                try:
                    await engine.load_adapter(name, str(path))
                    outcomes.append("ok")
                except (BadRequest, ServiceUnavailable) as exc:
                    outcomes.append(exc)
            if outcomes[0] == "ok":
                request = GenerationRequest(
                    messages=[{"role": "user", "content": "hi"}],
                    sampling=SamplingParams(max_tokens=4),
                    model="v1",
                )
                outcomes.append((await engine.generate(request)).model)
                await engine.unload_adapter("v1")
            return outcomes
        finally:
            await engine.close()

    ok, duplicate, missing, used = asyncio.run(run(fake))
    assert ok == "ok" and used == "v1"
    assert isinstance(duplicate, BadRequest) and duplicate.param == "name"
    assert isinstance(missing, BadRequest) and missing.param == "path"
    assert "No adapter found" in missing.message
    bare = start_fake_vllm(tiny_model_dir, tmp_path, *SERVE_FLAGS, "--enable-lora")
    try:
        (unmounted, *_) = asyncio.run(run(bare))
    finally:
        bare.stop()
    assert isinstance(unmounted, ServiceUnavailable)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in unmounted.message


# ---- /answer and a rollout through a policy process with MAGSRL_ENGINE=openai -------------
QUESTION = "What colour is the small sign?"
BOX = [60, 40, 120, 100]  # in the resized frame (Qwen2.5-VL convention)
ROUND1 = f"<think>The sign is too small.<zoom>[{BOX}]</zoom></think>"
ROUND2 = "<rethink>The magnified view shows it.</rethink><answer>red</answer>"


@pytest.fixture(scope="module")
def proxied(
    tmp_path_factory: pytest.TempPathFactory,
    fake: FakeUpstream,
    magnifier: RunningService,
    tiny_model_dir: Path,
    budget: int,
) -> Iterator[RunningService]:
    service = start_policy(
        tmp_path_factory.mktemp("policy-openai"),
        magnifier.url,
        str(tiny_model_dir),
        {
            "MAGSRL_ENGINE": "openai",
            "MAGSRL_UPSTREAM_URL": f"{fake.url}/v1",
            "MAGSRL_MAX_IMAGE_PIXELS_MODEL": str(budget),
        },
    )
    yield service
    service.supervisor.stop()


def test_answer_zoom_episode_through_the_openai_engine(
    proxied: RunningService, fake: FakeUpstream, budget: int, tiny_model_dir: Path
) -> None:
    """/answer's two-round zoom episode with the engine behind vLLM's wire format: the
    scripted turns come back verbatim, the box maps to the original through the frame the
    upstream's processor used, and round 2 saw the crop (two images, within the limit)."""
    fake.script(ROUND1, ROUND2)
    image = png_bytes(photo("rocket"))
    resp = httpx.post(
        f"{proxied.url}/answer",
        timeout=120,
        json={"image": {"b64": base64.b64encode(image).decode()}, "question": QUESTION},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["answer"] == "red"
    assert [r["text"] for r in body["rounds"]] == [ROUND1, ROUND2]
    size = (640, 427)
    frame = resized_size(*size, FAMILIES["qwen2_5_vl"], max_pixels=budget)
    expected = to_original_crop(
        BOX, 0, [original_slot(*size)], Convention.QWEN2_5_VL, lambda w, h: frame, size, 28
    )
    (zoom,) = body["rounds"][0]["zooms"]
    assert zoom["error"] is None and tuple(zoom["box"]) == expected
    sampled = [scripted_ids(tiny_model_dir, text) for text in (ROUND1, ROUND2)]
    assert body["usage"]["completion_tokens"] == sum(len(ids) for ids in sampled)
    sent = fake.requests()[-2:]
    assert [r["logprobs"] for r in sent] == [False, False]
    assert all(r["return_token_ids"] for r in sent)


def test_rollout_job_through_the_openai_engine(
    proxied: RunningService, fake: FakeUpstream, magnifier: RunningService, tiny_model_dir: Path
) -> None:
    """A rollout worker's job (worker -> policy -> openai engine -> vLLM-like upstream)
    completes, and the learner's segments hold exactly the token ids the upstream sampled,
    with one log-prob each."""
    from magsrl.proto.rollout import RolloutJob
    from magsrl.trainer.worker import RemotePolicy, run_job

    image = png_bytes(photo("rocket"))
    tok = tokenizer(tiny_model_dir)

    async def run() -> Any:
        magnifier_client = MagnifierClient(magnifier.url)
        upload = await magnifier_client.upload(image)
        policy = RemotePolicy(
            PolicySettings(
                engine="openai", upstream_url=f"{proxied.url}/v1", policy_model=str(tiny_model_dir)
            ).engine_settings()
        )
        job = RolloutJob(
            job_id="r:0:0:0",
            run_id="r",
            step=0,
            sample_index=0,
            group_index=0,
            version=0,
            policy_model=None,
            sample={"id": "s0", "image": "rocket.png", "question": QUESTION, "answer": "red"},  # type: ignore[arg-type]
            image_id=upload.image_id,
            max_tokens=64,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            rewards={"accuracy": 1.0},
        )
        try:
            fake.script(ROUND1, ROUND2)
            return await run_job(job, policy, magnifier_client, "test-worker")
        finally:
            await policy.close()
            await magnifier_client.close()

    result = asyncio.run(run())
    assert result.error is None and result.answer == "red" and result.correct
    sampled = [s for s in result.segments if s.mask == 1]
    assert [s.ids for s in sampled] == [
        scripted_ids(tiny_model_dir, ROUND1),
        scripted_ids(tiny_model_dir, ROUND2),
    ]
    assert all(s.logprobs and len(s.logprobs) == len(s.ids) for s in sampled)


def test_images_over_the_upstream_limit_are_a_400_through_the_policy(
    proxied: RunningService,
) -> None:
    """Issue 13, point 7: the policy allows more images per request (MAGSRL_MAX_IMAGES, 8)
    than the engine (--limit-mm-per-prompt, 5 here). vLLM's 400 must reach the client as a
    400 with vLLM's message, not a 5xx, and the policy keeps serving."""
    import openai

    url = "data:image/png;base64," + base64.b64encode(png_bytes(photo("coffee"))).decode()
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}}] * 6
    client = openai.OpenAI(base_url=f"{proxied.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": [*parts, {"type": "text", "text": "?"}]}],
            max_tokens=4,
        )
    assert "At most 5 image(s) may be provided in one prompt." in str(caught.value)
    ok = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert ok.choices[0].message.role == "assistant"
