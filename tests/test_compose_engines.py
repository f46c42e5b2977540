"""The several-engines recipes (compose.engines.yaml, compose.dp.yaml) resolve with the real
Compose v2 binary, on top of compose.yaml, and wire what docs/deploy.md says they wire."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_compose import BASE_ENV, REPO, _compose_binary


def resolved(tmp_path: Path, *files: str) -> dict[str, Any]:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in BASE_ENV.items()))
    flags = [flag for name in ("compose.yaml", *files) for flag in ("-f", str(REPO / name))]
    result = subprocess.run(
        [str(_compose_binary()), "--project-directory", str(REPO), *flags,
         "--env-file", str(env_file), "--profile", "train", "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def gpus(service: dict[str, Any]) -> list[Any]:
    return service["deploy"]["resources"]["reservations"]["devices"]


def test_engines_file_lists_every_engine_to_the_policy(tmp_path: Path) -> None:
    """The bugs it pins: an extra engine that kept the first one's host port (a clash at
    start) or its GPU, or one the policy was not told about (it idles)."""
    services = resolved(tmp_path, "compose.engines.yaml")
    engines = sorted(name for name in services if name.startswith("engine"))
    assert engines == ["engine", "engine-1", "engine-2", "engine-3"]
    assert sorted(gpus(services[n])[0]["device_ids"][0] for n in engines) == ["0", "1", "2", "3"]
    assert all(not services[n].get("ports") for n in engines[1:])
    assert all(services[n]["command"] == services["engine"]["command"] for n in engines)
    policy = services["policy"]
    urls = policy["environment"]["MAGSRL_UPSTREAM_URLS"].split(",")
    assert urls == [f"http://{n}:8100/v1" for n in engines]
    assert set(engines) <= set(policy["depends_on"])


@pytest.mark.parametrize("extra", [(), ("compose.dp.yaml",)], ids=["default", "dp"])
def test_dp_file_adds_data_parallel_and_the_default_keeps_one_engine(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """The default `docker compose up` keeps one engine on GPU 0 and no extra vLLM flags;
    compose.dp.yaml gives that engine N GPUs and --data-parallel-size N."""
    engine = resolved(tmp_path, *extra)["engine"]
    args = engine["environment"]["MAGSRL_ENGINE_EXTRA_ARGS"]
    if extra:
        assert args == "--data-parallel-size 4" and gpus(engine)[0]["count"] == 4
    else:
        assert args == "" and gpus(engine)[0]["device_ids"] == ["0"]
