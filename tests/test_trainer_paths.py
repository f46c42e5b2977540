"""Confined file access and bounded work at ``POST /v1/runs`` (issue 16), on the real
trainer app in process: a run writes only under the runs directory, reads only under the
data roots (after symlinks), says nothing about what exists outside them, and a dataset
too large is a 413 naming the limit, read while ``/health`` keeps answering."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from magsrl.cli.supervisor import free_port
from magsrl.trainer.app import create_app
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.runs import RunManager


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data"
    data.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "PNG")
    (data / "a.png").write_bytes(buf.getvalue())
    rows = [{"image": "a.png", "question": f"q{i}?", "answer": "red"} for i in range(8)]
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"data": data, "runs": tmp_path / "runs", "outside": tmp_path / "outside"}


def settings(roots: dict[str, Path], **overrides: Any) -> TrainerSettings:
    return TrainerSettings(
        runs_dir=roots["runs"],
        data_roots=[str(roots["data"])],
        # Nothing listens there: a run that got queued could never reach someone's Redis.
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        tensorboard=False,
        **overrides,
    )  # type: ignore[call-arg]


def body(roots: dict[str, Path], **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "paths",
        "model": "tiny",
        "dataset": str(roots["data"] / "data.jsonl"),
        "steps": 2,
        "grpo": {"group_size": 2, "prompts_per_step": 2, "micro_batch_size": 2},
    }
    return {**config, **overrides}


@pytest.fixture
def client(roots: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(settings(roots, max_dataset_rows=50_000))) as c:
        yield c


def refused(resp: httpx.Response, status: int, param: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"]
    return error["message"]


@pytest.mark.parametrize(
    "output_dir",
    [
        pytest.param("{outside}/new", id="absolute-path"),
        pytest.param("{data}/a.png", id="a-file"),
        pytest.param("/proc/x", id="proc"),
        pytest.param("run\x00x", id="nul-byte"),
        pytest.param("x" * 5000, id="5000-chars"),
        pytest.param("..", id="dot-dot"),
        pytest.param("../escape", id="dot-dot-slash"),
        pytest.param("sub/dir", id="nested"),
    ],
)
def test_output_dir_is_a_subfolder_never_a_path(
    client: TestClient, roots: dict[str, Path], output_dir: str
) -> None:
    """Bug: ``output_dir: /some/where/new`` got 202 and the trainer wrote (and deleted)
    there; a file, /proc/x, a NUL byte or 5,000 characters got a 500."""
    value = output_dir.format(**{k: str(v) for k, v in roots.items()})
    resp = client.post("/v1/runs", json=body(roots, output_dir=value))
    refused(resp, 400, "output_dir")
    assert not roots["outside"].exists()
    assert list(roots["runs"].iterdir()) == []  # nothing written for a refused run
    assert client.get("/health").status_code == 200


def test_output_dir_names_a_folder_under_the_runs_directory(roots: dict[str, Path]) -> None:
    """The accepted form: a named folder under runs_dir; a taken one is a 409. (The
    manager is not started, so nothing trains.)"""
    from magsrl.common.errors import BadRequest, Conflict

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            manager = RunManager(settings(roots), http)
            config = RunConfig.model_validate(body(roots, output_dir="mine"))
            run = await manager.submit(config)
            assert Path(run.info.output_dir) == (roots["runs"] / "mine").resolve()
            assert (roots["runs"] / "mine" / "config.yaml").is_file()
            with pytest.raises(Conflict):
                await manager.submit(config)
            (roots["runs"] / "afile").write_text("not a folder")
            with pytest.raises(BadRequest, match="not a folder"):
                await manager.submit(config.model_copy(update={"output_dir": "afile"}))

    asyncio.run(main())


def test_datasets_outside_the_roots_are_refused_alike(
    client: TestClient, roots: dict[str, Path]
) -> None:
    """Bug: any path was read ("/dev/zero" exhausted memory), and the messages told a
    missing file from an unreadable one: an oracle for the trainer's file system."""
    roots["outside"].mkdir()
    secret = roots["outside"] / "secret.jsonl"
    secret.write_text('{"image": "a.png", "question": "q", "answer": "a"}\n')
    (roots["data"] / "link.jsonl").symlink_to(secret)  # a symlink out of the root
    messages = {
        path: refused(client.post("/v1/runs", json=body(roots, dataset=path)), 400, "dataset")
        for path in (
            str(secret),
            str(roots["outside"] / "missing.jsonl"),
            "/etc/shadow",
            "/dev/zero",
            str(roots["data"] / "link.jsonl"),
            str(roots["data"] / ".." / "outside" / "secret.jsonl"),
        )
    }
    assert len(set(messages.values())) == 1, messages
    assert "data roots" in next(iter(messages.values()))
    for path, message in messages.items():
        assert path not in message
    long = refused(
        client.post("/v1/runs", json=body(roots, dataset="/" + "x" * 5000)), 400, "dataset"
    )
    assert "x" * 100 not in long


def test_a_device_inside_the_roots_is_not_read(roots: dict[str, Path]) -> None:
    """/dev/zero under a root (MAGSRL_DATA_ROOTS=/dev) is still no dataset: only plain
    files and folders are opened, so nothing reads forever."""
    s = settings(roots)
    s.data_roots = ["/dev"]
    with TestClient(create_app(s)) as c:
        resp = c.post("/v1/runs", json=body(roots, dataset="/dev/zero"))
        assert "does not exist" in refused(resp, 400, "dataset")


def test_images_outside_the_roots_are_refused(client: TestClient, roots: dict[str, Path]) -> None:
    """A dataset inside the roots must not make the trainer read (and upload to the
    magnifier) an image from anywhere: each row's image is confined too."""
    roots["outside"].mkdir()
    Image.new("RGB", (8, 8)).save(roots["outside"] / "b.png")
    row = {"image": str(roots["outside"] / "b.png"), "question": "q?", "answer": "a"}
    (roots["data"] / "escape.jsonl").write_text(json.dumps(row) + "\n")
    resp = client.post("/v1/runs", json=body(roots, dataset=str(roots["data"] / "escape.jsonl")))
    assert str(roots["outside"]) not in refused(resp, 400, "dataset row 1 image")


def test_first_row_keys_are_not_echoed(client: TestClient, roots: dict[str, Path]) -> None:
    """Bug: a JSONL the loaders could not place was refused quoting its first row's keys."""
    (roots["data"] / "odd.jsonl").write_text('{"api_token_column": 1}\n')
    resp = client.post("/v1/runs", json=body(roots, dataset=str(roots["data"] / "odd.jsonl")))
    assert "api_token_column" not in refused(resp, 400, "dataset")


def test_dataset_over_the_byte_limit_is_413(roots: dict[str, Path]) -> None:
    """The byte limit is checked before reading, and the 413 names its setting."""
    with TestClient(create_app(settings(roots, max_dataset_bytes=100))) as c:
        resp = c.post("/v1/runs", json=body(roots))
        assert "MAGSRL_MAX_DATASET_BYTES" in refused(resp, 413, "dataset")


@pytest.mark.slow
def test_a_big_dataset_is_read_off_the_event_loop(
    client: TestClient, roots: dict[str, Path]
) -> None:
    """Bug: a 100k-row JSONL blocked /health for 8.3 s (read on the event loop). Now it
    is read in a thread, and past MAGSRL_MAX_DATASET_ROWS it is a 413 naming the limit."""
    row = json.dumps({"image": "a.png", "question": "q?", "answer": "red"}) + "\n"
    (roots["data"] / "big.jsonl").write_text(row * 60_000)
    result: dict[str, Any] = {}

    def post() -> None:
        started = time.monotonic()
        result["resp"] = client.post(
            "/v1/runs", json=body(roots, dataset=str(roots["data"] / "big.jsonl"))
        )
        result["took"] = time.monotonic() - started

    thread = threading.Thread(target=post)
    thread.start()
    latencies = []
    while thread.is_alive():
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    thread.join()
    assert "MAGSRL_MAX_DATASET_ROWS" in refused(result["resp"], 413, "dataset")
    assert result["took"] > 1.0, "the read must take a while for this test to mean anything"
    assert len(latencies) >= 5 and max(latencies) < result["took"] / 3, latencies


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_local_models_outside_the_roots_are_refused_alike(
    client: TestClient, roots: dict[str, Path]
) -> None:
    """Bug: a run's ``model`` could be any local folder (the learner loaded whatever it
    named). Outside the roots (after symlinks) it is refused with one message that names
    the roots and MAGSRL_WEIGHTS_ROOTS, never the path; nothing is written."""
    outside = _model_folder(roots["outside"] / "model")
    (roots["data"] / "link-model").symlink_to(outside)
    messages = {
        path: refused(client.post("/v1/runs", json=body(roots, model=path)), 400, "model")
        for path in (
            str(outside),
            str(roots["outside"] / "missing"),
            "/etc",
            str(roots["data"] / "link-model"),
            str(roots["data"] / ".." / "outside" / "model"),
            "/" + "x" * 5000,
            "run\x00x",
        )
    }
    assert len(set(messages.values())) == 1, messages
    assert "MAGSRL_WEIGHTS_ROOTS" in next(iter(messages.values()))
    for path, message in messages.items():
        assert path not in message
    assert list(roots["runs"].iterdir()) == []
    assert client.get("/health").status_code == 200


def test_local_models_inside_the_roots_hub_ids_and_tiny_are_accepted(
    roots: dict[str, Path],
) -> None:
    """The accepted forms: a model folder under a data root or MAGSRL_WEIGHTS_ROOTS (stored
    resolved, as checked), a Hugging Face id and tiny (unchanged); a folder inside the roots
    without config.json is a 400 that says so. (The manager is not started.)"""
    from magsrl.common.errors import BadRequest

    inside = _model_folder(roots["data"] / "model")
    extra = _model_folder(roots["outside"] / "weights" / "model")

    async def main() -> None:
        async with httpx.AsyncClient() as http:
            manager = RunManager(settings(roots, weights_roots=[str(extra.parent)]), http)
            for model, stored in (
                (str(roots["data"] / "." / "model"), str(inside.resolve())),
                (str(extra), str(extra.resolve())),
                ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
                ("tiny", "tiny"),
            ):
                run = await manager.submit(RunConfig.model_validate(body(roots, model=model)))
                assert run.config.model == stored
            with pytest.raises(BadRequest, match="not a model folder"):
                await manager.submit(
                    RunConfig.model_validate(body(roots, model=str(roots["data"])))
                )

    asyncio.run(main())


def test_a_hub_id_run_model_is_read_from_the_hub_cache(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins a run failing at start with "is not a local folder" for `model:
    Qwen/Qwen2.5-VL-7B-Instruct`, the form compose's runs take (the engine downloads the
    model into the shared HF_HOME; the trainer mounts it read-only and offline). The id
    resolves to the cache's snapshot of the `main` ref, which the real loader reads; an id
    in no cache is None, which the run loop turns into a message that names the cache."""
    from magsrl.models.loading import load_model
    from magsrl.trainer.paths import local_model_dir

    home = tmp_path / "hf"
    repo = home / "hub" / "models--acme--tiny-vl"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in tiny_model_dir.iterdir():  # the Hub keeps blobs and links snapshots to them
        blob = repo / "blobs" / file.name
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    found = local_model_dir("acme/tiny-vl")
    assert found == snapshot
    # The real loader reads the snapshot's links: the very weights of the folder cached.
    cached, original = load_model(found).state_dict(), load_model(tiny_model_dir).state_dict()
    assert cached.keys() == original.keys()
    assert all(torch.equal(cached[k], original[k]) for k in original)
    assert local_model_dir("acme/not-downloaded") is None
    assert local_model_dir(str(tiny_model_dir)) == tiny_model_dir  # a local folder as it is
