"""The judge's model-backed methods end to end, with no doubles: a tiny policy is fine-tuned
to answer the rubric prompt with JSON and to solve one zoom question, then served by a real
policy process that a real judge process calls (mllm through /v1/chat/completions,
pass_rate through /answer)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from magsrl.common.images import decode_b64, decode_image, to_b64
from magsrl.judge.mllm import image_data_url, rubric_messages
from magsrl.models.sft import SFTExample, finetune
from magsrl.policy.scripted import CONVERGED_LOSS, conversation
from tests.conftest import RunningService, start_policy, start_service
from tests.test_zoom_loop_e2e import QUESTION, ROUND1, ROUND2, rocket_png, script

pytestmark = pytest.mark.slow

JUDGE_PIXELS = 200_000
RUBRIC = (
    '{"information_density": 6, "object_scale": 8, "visual_clutter": 4, '
    '"detail_level": 7, "zoom_score": 8, "rationale": "the sign is small"}'
)
SFT_STEPS = 300


def judge_example() -> SFTExample:
    """The exact messages the judge sends, with the image as the policy will decode it."""
    url = image_data_url(rocket_png(), max_pixels=JUDGE_PIXELS, max_image_pixels=10**8)
    messages = rubric_messages(url, QUESTION, None, None)
    content = messages[0]["content"]
    image = decode_image(decode_b64(content[0]["image_url"]["url"]), max_pixels=10**8)
    engine_messages = [{"role": "user", "content": [{"type": "image", "image": image}, content[1]]}]
    return SFTExample(engine_messages, RUBRIC)


@pytest.fixture(scope="module")
def taught_policy(
    tmp_path_factory: pytest.TempPathFactory, magnifier: RunningService, tiny_model_dir: Path
) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("judge-policy")
    first, second = asyncio.run(conversation(tiny_model_dir, magnifier.url, script("tags")))
    examples = [
        SFTExample(first, ROUND1["tags"]),
        SFTExample(second, ROUND2),
        judge_example(),
    ]
    losses = finetune(tiny_model_dir, tmp / "model", examples, steps=SFT_STEPS)
    assert max(losses[-3:]) < CONVERGED_LOSS, losses[-6:]
    service = start_policy(tmp, magnifier.url, str(tmp / "model"))
    yield service
    service.supervisor.stop()


def start_judge(tmp: Path, policy_url: str, redis_url: str, **extra: str) -> RunningService:
    env = {
        "MAGSRL_POLICY_URL": policy_url,
        "MAGSRL_REDIS_URL": redis_url,
        "MAGSRL_JUDGE_MLLM_IMAGE_PIXELS": str(JUDGE_PIXELS),
        "MAGSRL_PASS_RATE_SAMPLES": "3",
        # Near-greedy: the taught trajectory is reproduced on every attempt.
        "MAGSRL_PASS_RATE_TEMPERATURE": "0.01",
        **extra,
    }
    return start_service("judge", tmp, env)


@pytest.fixture(scope="module")
def judge(
    tmp_path_factory: pytest.TempPathFactory, taught_policy: RunningService, redis_server: str
) -> Iterator[httpx.Client]:
    service = start_judge(tmp_path_factory.mktemp("judge-m"), taught_policy.url, redis_server)
    with service.client(timeout=300.0) as client:
        yield client
    service.supervisor.stop()


def score(client: httpx.Client, **fields: object) -> dict:
    body = {"image": {"b64": to_b64(rocket_png())}, "question": QUESTION, "cache": False}
    resp = client.post("/v1/score", json={**body, **fields})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_mllm_rubric_through_the_policy(judge: httpx.Client) -> None:
    """The rubric JSON a served model writes becomes the score, factors and rationale."""
    body = score(judge, method="mllm")
    assert body["zoom_score"] == 8
    assert body["level"] == "hard"
    assert body["factors"] == {
        "information_density": 6.0,
        "object_scale": 8.0,
        "visual_clutter": 4.0,
        "detail_level": 7.0,
    }
    assert body["rationale"] == "the sign is small"
    assert body["samples"] == [8.0]
    assert body["version"].startswith("mllm-")


def test_pass_rate_tracks_the_policy(judge: httpx.Client) -> None:
    """A sample the policy always solves is easy (1); one it never solves is hard (10)."""
    solved = score(judge, method="pass_rate", answer="red")
    assert solved["samples"] == [1.0, 1.0, 1.0]
    assert solved["zoom_score"] == 1
    assert solved["level"] == "easy"
    assert "3 of 3" in solved["rationale"]
    failed = score(judge, method="pass_rate", answer="blue")
    assert failed["samples"] == [0.0, 0.0, 0.0]
    assert failed["zoom_score"] == 10


def test_pass_rate_unknown_adapter_is_4xx(judge: httpx.Client) -> None:
    """Measuring a policy version that is not loaded is the caller's mistake, said plainly."""
    body = {"image": {"b64": to_b64(rocket_png())}, "question": QUESTION, "answer": "red"}
    resp = judge.post("/v1/score", json={**body, "method": "pass_rate", "policy_model": "run-v99"})
    assert resp.status_code == 400, resp.text
    assert "run-v99" in resp.json()["error"]["message"]


def test_combined_weights_the_methods(
    tmp_path: Path, taught_policy: RunningService, redis_url: str
) -> None:
    service = start_judge(
        tmp_path,
        taught_policy.url,
        redis_url,
        MAGSRL_COMBINED_WEIGHTS='{"heuristic": 1, "mllm": 3}',
    )
    try:
        with service.client(timeout=300.0) as client:
            heuristic = score(client, method="heuristic")
            combined = score(client, method="combined")
    finally:
        service.supervisor.stop()
    expected = (heuristic["raw_score"] + 3 * 8.0) / 4
    assert combined["raw_score"] == pytest.approx(expected, abs=1e-2)
    assert combined["method"] == "combined"
    assert "[mllm 8.0]" in combined["rationale"]


def test_unreadable_judge_output_is_retried_then_502(
    tmp_path: Path, policy: RunningService, redis_url: str
) -> None:
    """The untrained tiny model writes junk: asked twice, then a 502 that says so; the
    judge keeps serving."""
    service = start_judge(tmp_path, policy.url, redis_url, MAGSRL_JUDGE_MLLM_MAX_TOKENS="24")
    try:
        with service.client(timeout=300.0) as client:
            body = {"image": {"b64": to_b64(rocket_png())}, "question": "q", "method": "mllm"}
            resp = client.post("/v1/score", json=body)
            assert resp.status_code == 502, resp.text
            assert resp.json()["error"]["type"] == "upstream_error"
            assert "unreadable twice" in resp.json()["error"]["message"]
            assert client.post("/v1/score", json={**body, "method": "heuristic"}).status_code == 200
        with httpx.Client(base_url=policy.url) as p:
            calls = re.search(
                r'^magsrl_http_requests_total\{[^}]*route="/v1/chat/completions"[^}]*\} (\S+)',
                p.get("/metrics").text,
                re.MULTILINE,
            )
        assert calls is not None and float(calls.group(1)) >= 2
    finally:
        service.supervisor.stop()
