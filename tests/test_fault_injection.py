"""Fault injection on ``magsrl up --train`` (issue 16): SIGKILL of a rollout worker, the
magnifier, the policy, the trainer and Redis during one training run, then SIGHUP and
SIGKILL of ``magsrl up`` itself.

Found before: any one of those kills stopped the whole stack; Redis's failed the run for
good; a resumed step lost half its rollouts ("image … is no longer in the magnifier");
``kill -HUP``/``-9`` of ``magsrl up`` left 5-7 children serving. Pinned here: ``up``
restarts what died and says so, the run completes with every step once and no rollout
lost or failed, no process is left, and a second ``up`` on the same state directory is
refused with the first one's PID.

One stack serves all the service kills (each kill lands while a step is in flight), so
the file costs one stack start-up plus the restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from magsrl.data.synth import SynthConfig, generate

pytestmark = pytest.mark.slow

UP_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 600.0
RESTART_TIMEOUT_S = 180.0
# In the order they are killed, one per step; the run has one step more than kills.
VICTIMS = ["rollout-worker", "magnifier", "policy", "trainer", "redis"]
STEPS = len(VICTIMS) + 2


@dataclass
class Up:
    """A running ``magsrl up``: its process, everything it printed, every PID it ran."""

    proc: subprocess.Popen[str]
    state: Path
    lines: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float, count: int = 1) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.children()
            if len(re.findall(pattern, self.out)) >= count:
                return self.out
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} (x{count}) from magsrl up; it printed:\n{self.out}")

    def children(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        self.seen.update(k.pid for k in kids)
        return kids

    def pid_of(self, victim: str) -> int:
        for child in self.children():
            with contextlib.suppress(psutil.Error):
                argv = child.cmdline()
                # redis-server rewrites its title: "…/redis-server 127.0.0.1:6379".
                if victim == "redis" and argv and "redis-server" in argv[0]:
                    return child.pid
                if "serve" in argv and victim in argv:
                    return child.pid
        raise AssertionError(f"no {victim} among the children of magsrl up:\n{self.out}")

    def left_running(self) -> list[int]:
        alive = []
        for pid in self.seen:
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive


def start_up(tmp: Path, state: Path, *args: str, env: dict[str, str] | None = None) -> Up:
    proc = subprocess.Popen(
        [sys.executable, "-m", "magsrl.cli", "up", "--state-dir", str(state), *args],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Wide lines: rich wraps at 80 columns when not on a terminal.
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        start_new_session=True,
    )
    up = Up(proc, state)

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            up.lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return up


def kill_all(up: Up) -> None:
    """After a failed assertion: nothing may outlive the test."""
    up.children()
    with contextlib.suppress(ProcessLookupError):
        os.kill(up.proc.pid, signal.SIGKILL)
    for pid in up.seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, str, Path]]:
    tmp = tmp_path_factory.mktemp("faults")
    dataset = generate(8, tmp / "synth", SynthConfig(width=320, height=240, image_format="jpeg"))
    env = {
        "MAGSRL_DATA_ROOTS": str(tmp),
        "MAGSRL_TENSORBOARD": "false",
        "MAGSRL_STEP_TIMEOUT_S": str(RUN_TIMEOUT_S),
        "MAGSRL_TORCH_THREADS": "1",
    }
    up = start_up(tmp, tmp / "state", "--model", "tiny", "--train", "--workers", "2", env=env)
    try:
        out = up.wait_for("Ctrl-C stops everything", UP_TIMEOUT_S)
        trainer = re.search(r"train: .*--url\s+(http://127\.0\.0\.1:\d+)", out)
        assert trainer is not None, out
        yield up, trainer.group(1), dataset
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.proc.wait(timeout=60)
        kill_all(up)


def run_config(dataset: Path) -> dict[str, Any]:
    return {
        "name": "faults",
        "model": "tiny",
        "dataset": str(dataset),
        "steps": STEPS,
        "seed": 3,
        "grpo": {
            "group_size": 4,
            "prompts_per_step": 2,
            "micro_batch_size": 8,
            "max_new_tokens": 8,
            "max_rounds": 1,
            "drop_zero_variance": False,  # the learner takes every step
        },
        "rollout": {"job_timeout_s": 5, "queue_maxlen": 1000, "max_lag": 64},
    }


def run_info(url: str, run_id: str) -> dict[str, Any] | None:
    try:
        return httpx.get(f"{url}/v1/runs/{run_id}", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None  # the trainer is being restarted


def wait_run(url: str, run_id: str, done: Any, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    info = None
    while time.monotonic() < deadline:
        info = run_info(url, run_id)
        if info is not None and done(info):
            return info
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not get there in {timeout_s}s: {info}")


def finished(info: dict) -> bool:
    return info["status"] in {"completed", "failed", "cancelled"}


@pytest.mark.timeout(1200)  # a stack, five kills and restarts on 2 shared cores
def test_the_run_survives_each_service_killed(stack: tuple[Up, str, Path]) -> None:
    """SIGKILL each service while a step is in flight: up restarts it and reports it, the
    run completes with every step once, and every step trained on all its rollouts."""
    up, url, dataset = stack
    resp = httpx.post(f"{url}/v1/runs", json=run_config(dataset), timeout=60)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["run_id"]
    for i, victim in enumerate(VICTIMS):
        wait_run(url, run_id, lambda info, i=i: info["step"] >= i + 1 or finished(info))
        pid = up.pid_of(victim)
        os.kill(pid, signal.SIGKILL)
        up.wait_for(r"exited with code -9; restarting", RESTART_TIMEOUT_S, count=i + 1)
        up.wait_for(r" restarted \(pid \d+", RESTART_TIMEOUT_S, count=i + 1)
    info = wait_run(url, run_id, finished)
    assert info["status"] == "completed", (info.get("error"), info.get("warnings"), up.out)
    rows = [
        json.loads(line)
        for line in (Path(info["output_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # counted from 1
    # No rollout lost or failed at any step, resumed ones included: 8 of 8 usable.
    assert all(r["failed"] == 0 and r["stale_dropped"] == 0 for r in rows), rows
    # Every step trained on its full set: 8 rollouts, less the zero-variance groups dropped,
    # plus the prompts refilled in their place (DAPO), 4 rollouts a group.
    assert all(
        r["sequences"] + 4 * r["groups_dropped"] == 8 + 4 * r["refilled_prompts"]
        for r in rows
        if "sequences" in r
    ), rows
    for victim in VICTIMS:
        assert re.search(rf"{victim}\S* exited with code -9", up.out), victim
    # The finished run's adapters left the policy.
    policy = re.search(r"--url\s+(http://127\.0\.0\.1:\d+)", up.out)
    assert policy is not None
    models = httpx.get(f"{policy.group(1)}/v1/models", timeout=10).json()["data"]
    assert not [m["id"] for m in models if m["id"].startswith(run_id)]
    # SIGINT stops the stack, restarted children included.
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    time.sleep(0.5)
    assert up.left_running() == [], up.out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL], ids=["hup", "kill"])
def test_children_die_with_up_and_a_second_up_is_refused(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Bug: `kill -HUP` or `kill -9` of magsrl up left 5-7 children serving; a second up
    on the same state directory started a second stack over the first one's files."""
    state = tmp_path / "state"
    up = start_up(tmp_path, state, "--model", "tiny")
    try:
        up.wait_for("Ctrl-C stops everything", UP_TIMEOUT_S)
        assert len(up.children()) >= 5  # redis, magnifier, judge, policy, trainer
        second = subprocess.run(
            [sys.executable, "-m", "magsrl.cli", "up", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 1
        assert f"pid {up.proc.pid}" in second.stdout, second.stdout + second.stderr
        os.kill(up.proc.pid, sig)
        up.proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while up.left_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert up.left_running() == [], up.out
    finally:
        kill_all(up)
