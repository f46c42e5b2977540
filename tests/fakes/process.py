"""Starting the fake vLLM as a real process on a free port, the way compose starts vLLM."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from magsrl.cli.supervisor import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeUpstream:
    url: str  # the server root; the OpenAI API is under /v1
    process: subprocess.Popen[bytes]
    log: Path

    def script(self, *completions: str) -> None:
        """Queue completion texts: each choice of a later request takes the next one."""
        resp = httpx.post(f"{self.url}/fake/script", json={"completions": list(completions)})
        resp.raise_for_status()

    def requests(self) -> list[dict]:
        return httpx.get(f"{self.url}/fake/requests").json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_fake_vllm(
    model: Path, log_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> FakeUpstream:
    port = free_port()
    log = log_dir / f"fake-vllm-{port}.log"
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "tests.fakes.vllm_server", "--model", str(model)]
    cmd += ["--port", str(port), *flags]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the fake vLLM exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return FakeUpstream(url, process, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the fake vLLM did not start: {log.read_text()[-2000:]}")
