"""``magsrl runs list|follow|cancel`` and ``magsrl train --detach`` against a real trainer
process (issue 17: runs could be listed, followed and cancelled only with curl)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from magsrl.cli.supervisor import free_port
from tests.conftest import start_service

EXAMPLE = Path(__file__).parents[1] / "examples" / "train-tiny.yaml"
API_KEY = "runs-cli-key"


def magsrl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "magsrl.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200", **env},
    )


@pytest.mark.slow
def test_runs_list_follow_cancel(tmp_path: Path, redis_url: str) -> None:
    """Pins: no CLI to list, follow or cancel runs, and `train --detach` said nothing about
    how to follow or cancel the run it started. Honours MAGSRL_TRAINER_URL and the key."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # no policy: the run fails at its start
    trainer = start_service(
        "trainer",
        tmp_path,
        {
            "MAGSRL_REDIS_URL": redis_url,
            "MAGSRL_RUNS_DIR": str(tmp_path / "runs"),
            "MAGSRL_POLICY_URL": nowhere,
            "MAGSRL_MAGNIFIER_URL": nowhere,
            "MAGSRL_JUDGE_URL": nowhere,
        },
        api_key=API_KEY,
    )
    env = {"MAGSRL_TRAINER_URL": trainer.url, "MAGSRL_API_KEY": API_KEY}
    try:
        started = magsrl("train", str(EXAMPLE), "--detach", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = started.stdout.split()[1]
        assert f"magsrl runs follow {run_id}" in started.stdout
        assert f"magsrl runs cancel {run_id}" in started.stdout

        listed = magsrl("runs", "list", env=env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert run_id in listed.stdout

        cancelled = magsrl("runs", "cancel", run_id, env=env)
        # Cancelled, or refused because it already failed (no policy): either way, said.
        assert run_id in cancelled.stdout or "already" in cancelled.stdout, cancelled.stdout

        followed = magsrl("runs", "follow", run_id, env=env)
        assert f"run {run_id}:" in followed.stdout, followed.stdout + followed.stderr
        assert followed.returncode == 1  # it did not complete

        missing = magsrl("runs", "follow", "no-such-run", env=env)
        assert missing.returncode == 1 and "no run" in missing.stdout

        anonymous = magsrl("runs", "list", env={**env, "MAGSRL_API_KEY": ""})
        assert anonymous.returncode == 1
    finally:
        trainer.supervisor.stop()
