"""A run waiting for Redis says so (issue 16): while a dependency is away the trainer pauses
the run instead of failing it, and its status is ``paused`` (with the reason in a status
event), not ``running``; when the dependency answers again it goes back to ``running`` and
finishes. ``magsrl runs list`` and ``magsrl runs follow`` show it.

Real pieces: the trainer app over HTTP (uvicorn in a thread), a real redis-server that is
absent at first and started later, the real probe of the dependencies. The training itself
is a stand-in (``RunLoop`` replaced) whose run needs Redis, so the outage is a real one.

Run: OMP_NUM_THREADS=1 pytest tests/test_run_paused.py
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from PIL import Image
from rich.console import Console

from magsrl.cli.runs import list_runs
from magsrl.cli.supervisor import free_port
from magsrl.cli.train import follow
from magsrl.common.redis_server import EmbeddedRedis
from magsrl.trainer.app import create_app
from magsrl.trainer.config import TrainerSettings


class NeedsRedis:
    """Stands in for ``RunLoop``: its run pings the run's Redis, as the real loop's queue
    does first, so a Redis that is away raises the real client's ConnectionError."""

    def __init__(self, run_id: str, config: Any, run_dir: Path, settings: Any, *_: Any) -> None:
        self.settings = settings

    async def run(self) -> dict[str, object]:
        client = aioredis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1)
        try:
            await client.ping()
        finally:
            await client.aclose()
        return {"adapter": None, "plots": []}


@pytest.fixture
def trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    """The trainer's URL and the port its (not yet started) Redis will listen on."""
    monkeypatch.setattr("magsrl.trainer.runs.RunLoop", NeedsRedis)
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (16, 16), "red").save(data / "a.png")
    rows = [{"image": "a.png", "question": f"q{i}?", "answer": "red"} for i in range(4)]
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    redis_port, port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    settings = TrainerSettings(
        runs_dir=tmp_path / "runs",
        data_roots=[str(data)],
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        # The trainer's own /ready answers once Redis does: it stands in for both services.
        policy_url=url,
        magnifier_url=url,
        tensorboard=False,
    )  # type: ignore[call-arg]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the trainer did not start"
        time.sleep(0.05)
    try:
        yield url, redis_port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _status(url: str, run_id: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/runs/{run_id}", timeout=10).json()


def test_a_run_waiting_for_redis_is_paused_then_running(
    trainer: tuple[str, int], tmp_path: Path
) -> None:
    """Bug: a run the trainer had paused while Redis was away reported "running" (the
    pause was only a warning event), so nothing told an operator it was waiting."""
    url, redis_port = trainer
    config = {
        "name": "paused",
        "model": "tiny",
        "dataset": str(tmp_path / "data" / "data.jsonl"),
        "steps": 1,
        "grpo": {"group_size": 2, "prompts_per_step": 2, "micro_batch_size": 2},
    }
    created = httpx.post(f"{url}/v1/runs", json=config, timeout=30)
    assert created.status_code == 202, created.text
    run_id = created.json()["run_id"]
    deadline = time.monotonic() + 30
    while (info := _status(url, run_id))["status"] != "paused":
        assert info["status"] in ("queued", "running"), info
        assert time.monotonic() < deadline, info
        time.sleep(0.1)
    on_disk = json.loads((Path(info["output_dir"]) / "status.json").read_text())
    assert on_disk["status"] == "paused"
    assert "redis" in (info["reason"] or "").lower() and "MAGSRL_DEPENDENCY_WAIT_S" in (
        info["reason"] or ""
    )

    listing = Console(record=True, width=400)
    assert list_runs(url, {}, listing) == 0
    listed = listing.export_text()
    assert run_id in listed and "paused" in listed and "Connection refused" in listed

    with EmbeddedRedis(port=redis_port):
        following = Console(record=True, width=400)
        assert follow(url, run_id, {}, 1, following) == 0  # returns once it completed
    followed = following.export_text()
    assert "paused: paused at step 0" in followed and "running: resumed" in followed
    info = _status(url, run_id)
    assert info["status"] == "completed" and info["reason"] is None
    events = httpx.get(f"{url}/v1/runs/{run_id}/events", timeout=10).text
    statuses = [
        json.loads(line[len("data: ") :])["status"]
        for line in events.splitlines()
        if line.startswith("data: ") and '"type": "status"' in line
    ]
    assert statuses == ["queued", "running", "paused", "running", "completed"]
