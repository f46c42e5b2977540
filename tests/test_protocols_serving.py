"""Peer protocols through the serving and training paths, in-process: the real policy app
(``/answer``, ``GET /v1/protocols``) with a scripted engine speaking DeepEyes' and Mini-o3's
formats, and the real rollout worker (``run_job``) against a scripted policy. Each episode
zooms into an earlier observation, the case the peers' formats exist for."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from magsrl.clients.policy import PolicyClient
from magsrl.common.images import encode_image
from magsrl.policy import app as policy_app_module
from magsrl.policy.config import PolicySettings
from magsrl.policy.serving_answer import AnswerService
from magsrl.proto.rollout import RolloutJob
from magsrl.proto.sample import Sample
from magsrl.trainer.config import WorkerSettings
from magsrl.trainer.worker import RolloutWorker, run_job
from magsrl.zoom.families import QWEN2_5_VL
from magsrl.zoom.loop import ZoomLoop
from tests.fakes.episode import EOS, FakeMagnifier, FakePolicy, ScriptedEngine

IMAGE = Image.new("RGB", (784, 588), (240, 240, 240))  # 28x21 patches of 28
IMAGE.paste((200, 0, 0), (392, 294, 784, 588))
PNG = encode_image(IMAGE, "png")

# Sides that are multiples of 28 keep DeepEyes' resized frame equal to the image.
DEEPEYES = [
    '<think>Look closer.</think>\n<tool_call>\n{"name": "image_zoom_in_tool", "arguments": '
    '{"bbox_2d": [196, 140, 756, 532], "label": "the sign"}}\n</tool_call>',
    '<think>Closer still, inside that crop.</think>\n<tool_call>\n{"name": '
    '"image_zoom_in_tool", "arguments": {"bbox_2d": [280, 196, 560, 392], "img_idx": 1}}'
    "\n</tool_call>",
    "<think>It is red.</think>  <answer>red</answer>",
]
# The crop of [196, 140, 756, 532] is 560x392; [280, 196, 560, 392] on it is its lower right.
DEEPEYES_BOXES = [[196, 140, 756, 532], [476, 336, 756, 532]]

MINI_O3 = [
    '<think>Look closer.</think> <grounding>{"bbox_2d": [0.25, 0.25, 0.75, 0.75], '
    '"source": "original_image"}</grounding>',
    '<think>Closer still.</think> <grounding>{"bbox_2d": [0.5, 0.5, 1.0, 1.0], '
    '"source": "observation_1"}</grounding>',
    "<think>It is red.</think><answer>red</answer>",
]
MINI_O3_BOXES = [[196, 147, 588, 441], [392, 294, 588, 441]]


class Swapped:
    """The policy app with its engine and magnifier swapped for scripted ones."""

    def __init__(self, client: TestClient, settings: PolicySettings) -> None:
        self.client, self.settings = client, settings
        self.magnifier = FakeMagnifier()

    def script(self, replies: list[str], model: str = "m") -> ScriptedEngine:
        engine = ScriptedEngine(replies, QWEN2_5_VL, base_model=model)
        state = self.client.app.state  # type: ignore[attr-defined]
        state.engine = engine
        state.answer = AnswerService(
            engine,
            ZoomLoop(engine, self.magnifier),  # type: ignore[arg-type]
            self.magnifier,  # type: ignore[arg-type]
            httpx.AsyncClient(),
            self.settings,
        )
        return engine


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Swapped]:
    settings = PolicySettings(policy_model="m")  # type: ignore[call-arg]
    # No model to load: the lifespan gets a scripted engine, the test swaps in its own.
    monkeypatch.setattr(policy_app_module, "build_engine", lambda s: ScriptedEngine([], QWEN2_5_VL))
    with TestClient(policy_app_module.create_app(settings)) as client:
        yield Swapped(client, settings)


def answer(app: Swapped, **fields: Any) -> dict[str, Any]:
    body = {"image": {"b64": base64.b64encode(PNG).decode()}, "question": "What colour?"}
    response = app.client.post("/answer", json={**body, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("protocol", "replies", "boxes"),
    [
        pytest.param("deepeyes", DEEPEYES, DEEPEYES_BOXES, id="deepeyes"),
        pytest.param("mini_o3", MINI_O3, MINI_O3_BOXES, id="mini-o3"),
    ],
)
def test_answer_runs_a_peer_episode_into_an_earlier_observation(
    app: Swapped, protocol: str, replies: list[str], boxes: list[list[int]]
) -> None:
    """Pins /answer's protocol field: a DeepEyes or Mini-o3 checkpoint's calls (before:
    'unknown tool', or not parsed at all) zoom twice, the second time into the first crop,
    and the boxes come back in original pixels; the turn limit is the peer's (3 turns
    would exceed magsrl's 2)."""
    app.script(list(replies))
    body = answer(app, protocol=protocol)
    assert body["answer"] == "red"
    assert [z["box"] for r in body["rounds"] for z in r["zooms"]] == boxes
    assert [z["img_idx"] for r in body["rounds"] for z in r["zooms"]] == [0, 1]
    assert [c.boxes[0] for c in app.magnifier.calls] == boxes


def test_auto_and_the_served_setting_pick_by_model_name(app: Swapped) -> None:
    """Pins auto: a policy serving a checkpoint named Mini-o3 speaks Mini-o3 to a request
    that names no protocol when its setting is auto."""
    app.settings.zoom_protocol = "auto"
    state = app.client.app.state  # type: ignore[attr-defined]
    app.script(list(MINI_O3), model="Mini-o3/Mini-o3-7B-v1")
    state.answer.served = app.settings.served_options()
    body = answer(app)
    assert [z["box"] for r in body["rounds"] for z in r["zooms"]] == MINI_O3_BOXES


def test_protocols_route_lists_the_registry(app: Swapped) -> None:
    """Pins GET /v1/protocols: every protocol with its conventions and the served default;
    and an unknown protocol on /answer is a 422 naming the field, not a 500."""
    listing = app.client.get("/v1/protocols").json()
    by_name = {p["name"]: p for p in listing["data"]}
    assert listing["default"] == "magsrl_tags"
    assert set(by_name) == {
        "magsrl_tags",
        "magsrl_tools",
        "deepeyes",
        "mini_o3",
        "mgpo",
        "qwen3_vl_thinking",
        "chain_of_focus",
    }
    assert by_name["deepeyes"]["tool_name"] == "image_zoom_in_tool"
    assert by_name["mini_o3"]["coordinates"] == "norm1"
    # The chat tool a client declares to get each protocol's calls back as tool_calls.
    assert by_name["deepeyes"]["chat_tool"]["function"]["name"] == "image_zoom_in_tool"
    assert "bbox_2d" in by_name["deepeyes"]["chat_tool"]["function"]["parameters"]["properties"]
    assert by_name["mini_o3"]["chat_tool"]["function"]["name"] == "grounding"
    assert by_name["mgpo"]["chat_tool"] is None
    assert by_name["magsrl_tags"]["aliases"] == ["tags"]
    body = {"image": {"b64": base64.b64encode(PNG).decode()}, "question": "q", "protocol": "o3"}
    response = app.client.post("/answer", json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == "protocol"


# ---- one rollout ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "replies", "boxes"),
    [
        pytest.param("deepeyes", DEEPEYES, DEEPEYES_BOXES, id="deepeyes"),
        pytest.param("mini_o3", MINI_O3, MINI_O3_BOXES, id="mini-o3"),
    ],
)
def test_rollout_runs_a_peer_episode(protocol: str, replies: list[str], boxes: Any) -> None:
    """Pins training from a peer checkpoint in its own format: a rollout job with the
    peer's protocol zooms into an earlier observation through the worker, is scored
    correct, and passes the format reward by the peer's own rule (an <answer> at the end),
    not magsrl's <rethink> rules."""

    async def main() -> tuple[Any, FakeMagnifier, FakePolicy]:
        policy = FakePolicy("/models/peer", "qwen2_5_vl", list(replies))
        magnifier = FakeMagnifier()
        info = await magnifier.upload(PNG)
        worker = RolloutWorker(
            WorkerSettings(policy_url="http://policy.test", worker_name="w"),  # type: ignore[call-arg]
            policy_client=PolicyClient("http://policy.test", client=policy.client()),
            magnifier=magnifier,  # type: ignore[arg-type]
        )
        await worker.connect()
        assert worker.policy is not None
        await worker.policy.http.aclose()
        worker.policy.http = policy.client()
        job = RolloutJob(
            job_id="r:0:0:0",
            run_id="r",
            step=0,
            sample_index=0,
            group_index=0,
            version=0,
            policy_model=None,
            sample=Sample(id="s", image="x.png", question="What colour?", answer="red"),
            image_id=info.image_id,
            eos_token_id=EOS,
            rewards={"accuracy": 1.0, "format": 0.1},
            protocol=protocol,
            max_rounds=len(replies),
        )
        result = await run_job(job, worker.policy, magnifier, "w", worker.served)  # type: ignore[arg-type]
        await worker.close()
        return result, magnifier, policy

    result, magnifier, policy = asyncio.run(main())
    assert result.error is None and result.correct and result.zooms == 2
    assert [c.boxes[0] for c in magnifier.calls] == boxes
    assert result.components["format"] == 1.0
    # The second crop reached the model in the peer's user-turn layout.
    last = policy.chats[-1]["messages"][-1]
    assert last["role"] == "user"
    texts = "".join(p.get("text", "") for p in last["content"] if isinstance(p, dict))
    wrapper = "<tool_response>" if protocol == "deepeyes" else "(Observation 2)"
    assert wrapper in texts, json.dumps(last)[:400]


# ---- eval -----------------------------------------------------------------------------


def test_eval_leaves_the_turn_limit_to_the_protocol_unless_set(tmp_path: Any) -> None:
    """Pins eval capping every peer at 2 turns: a config that names a protocol and no
    max_rounds sends none (the policy then runs Mini-o3's 12), and a set one is sent."""
    from magsrl.eval.runner import ImageInfo, request_for
    from magsrl.proto.eval import ArmSpec, EvalConfig

    arm = ArmSpec(name="zoom", zoom="auto", upscale="sr")
    sample = Sample(id="s", image="x.png", question="q", answer="red")
    image = ImageInfo(data=PNG, size=IMAGE.size, thumb=None)
    config = EvalConfig(dataset="d", arms=[arm], out=tmp_path, protocol="mini_o3")
    request = request_for(sample, arm, image, config)
    assert request.protocol == "mini_o3" and "max_rounds" not in request.model_fields_set
    config = EvalConfig(dataset="d", arms=[arm], out=tmp_path, protocol="mini_o3", max_rounds=4)
    assert request_for(sample, arm, image, config).max_rounds == 4
