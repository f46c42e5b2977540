"""The model family comes from the model's own config.json, end to end on real processes: a
Qwen3-VL tiny model served from a folder whose name says nothing of "qwen3" gets Qwen3-VL's
0-1000 coordinates in the policy's /answer loop, in a policy chained to it through the
openai engine, and in a rollout the worker runs against it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from magsrl.clients.policy import PolicyClient
from magsrl.proto.rollout import RolloutJob
from magsrl.proto.sample import Sample
from magsrl.trainer.config import WorkerSettings
from magsrl.trainer.worker import RolloutWorker, run_job
from magsrl.zoom.engine import GenerationRequest
from tests.conftest import RunningService, photo, png_bytes, start_policy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain_named_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from magsrl.models.tiny import ensure_tiny_model

    target = tmp_path_factory.mktemp("models") / "my-vision-model"
    shutil.copytree(ensure_tiny_model("qwen3_vl"), target)
    return target


@pytest.fixture(scope="module")
def qwen3_policy(
    tmp_path_factory: pytest.TempPathFactory, magnifier: RunningService, plain_named_qwen3: Path
) -> Iterator[RunningService]:
    service = start_policy(
        tmp_path_factory.mktemp("policy-q3"),
        magnifier.url,
        str(plain_named_qwen3),
        {"MAGSRL_MAX_CONTEXT": "4096"},
    )
    yield service
    service.supervisor.stop()


def test_answer_loop_uses_the_config_family(qwen3_policy: RunningService) -> None:
    """Pins the family guessed from a substring of the model's name: the policy reports
    Qwen3-VL (its config.json's model_type) on its model card and in /v1/policy/info,
    which is the convention its /answer loop writes and reads boxes in."""
    with qwen3_policy.client() as http:
        card = http.get("/v1/models").json()["data"][0]
        info = http.get("/v1/policy/info").json()
        answer = http.post(
            "/answer",
            json={
                "image": {"b64": _b64(png_bytes(photo("rocket")))},
                "question": "What is this?",
                "max_tokens": 8,
            },
        )
    assert card["family"] == "qwen3_vl"
    assert (info["family"], info["convention"]) == ("qwen3_vl", "qwen3-vl")
    assert answer.status_code == 200, answer.text


def test_chained_openai_engine_learns_the_family_from_the_upstream(
    tmp_path: Path, magnifier: RunningService, qwen3_policy: RunningService
) -> None:
    """Pins the openai engine guessing from the upstream's name: a policy in front of the
    Qwen3-VL one (engine=openai) learns qwen3_vl from the upstream's model card."""
    with qwen3_policy.client() as http:
        base = http.get("/v1/models").json()["data"][0]["id"]
    front = start_policy(
        tmp_path,
        magnifier.url,
        base,
        {"MAGSRL_ENGINE": "openai", "MAGSRL_UPSTREAM_URL": f"{qwen3_policy.url}/v1"},
    )
    try:
        with front.client() as http:
            info = http.get("/v1/policy/info").json()
    finally:
        front.supervisor.stop()
    assert (info["family"], info["convention"]) == ("qwen3_vl", "qwen3-vl")


def test_rollout_prompts_and_maps_in_the_served_family(
    magnifier: RunningService, qwen3_policy: RunningService
) -> None:
    """Pins the worker's engine guessing the family from the name "policy" (always
    Qwen2.5-VL): a real rollout against the Qwen3-VL policy tells the model 0-1000
    coordinates."""

    async def main() -> tuple[str, str | None]:
        worker = RolloutWorker(
            WorkerSettings(policy_url=qwen3_policy.url, magnifier_url=magnifier.url)  # type: ignore[call-arg]
        )
        await worker.connect()
        assert worker.policy is not None
        seen: list[GenerationRequest] = []
        generate = worker.policy.generate

        async def recording(request: GenerationRequest):  # type: ignore[no-untyped-def]
            seen.append(request)
            return await generate(request)

        worker.policy.generate = recording  # type: ignore[method-assign]
        info = await worker.magnifier.upload(png_bytes(photo("rocket")))
        job = RolloutJob(
            job_id="r:0:0:0",
            run_id="r",
            step=0,
            sample_index=0,
            group_index=0,
            version=0,
            policy_model=None,
            sample=Sample(id="s", image="x", question="What is this?", answer="rocket"),
            image_id=info.image_id,
            eos_token_id=worker_eos(),
            rewards={"accuracy": 1.0},
            max_tokens=8,
        )
        result = await run_job(job, worker.policy, worker.magnifier, "w", worker.served)
        family = worker.policy.family.name
        await worker.close()
        return family, seen[0].messages[0]["content"] if result.error is None else result.error

    family, system = asyncio.run(main())
    assert family == "qwen3_vl"
    assert system is not None and "0 to 1000" in system


def worker_eos() -> int:
    from magsrl.models.tiny import ensure_tiny_model

    tokenizer_dir = ensure_tiny_model("qwen3_vl")
    from transformers import AutoTokenizer

    return int(
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).convert_tokens_to_ids("<|im_end|>")
    )


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_policy_client_reads_the_info(qwen3_policy: RunningService) -> None:
    """Pins the typed client against the real endpoint (shape drift between the two)."""

    async def main() -> str | None:
        async with PolicyClient(qwen3_policy.url) as client:
            return (await client.info()).family

    assert asyncio.run(main()) == "qwen3_vl"
