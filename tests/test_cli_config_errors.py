"""Config mistakes get one clear line and exit code 2 (issue 17): a YAML syntax error and
`make-tiny-model` on a file path printed Python tracebacks; a mistyped key printed
pydantic's text with its documentation URL, from `magsrl train` and from POST /v1/runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from magsrl.cli import main

EXAMPLE = Path(__file__).parents[1] / "examples" / "train-tiny.yaml"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out + out.err


def typo_config() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["grpo"]["gruop_size"] = data["grpo"].pop("group_size", 4)
    return data


def test_yaml_syntax_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pins: `magsrl train bad.yaml` printed a yaml.scanner traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: 3\n  grpo: [\n")
    code, out = run_cli(["train", str(bad)], capsys)
    assert code == 2
    assert "Traceback" not in out
    assert "YAML syntax error at line 3" in out


def test_typo_in_a_key_suggests_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pins: a typo gave "Extra inputs are not permitted ... https://errors.pydantic.dev"."""
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump(typo_config()))
    code, out = run_cli(["train", str(config)], capsys)
    assert code == 2
    assert "unknown key `gruop_size`; did you mean `group_size`?" in out
    assert "pydantic.dev" not in out and "Value error" not in out


def test_make_tiny_model_on_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pins: `magsrl make-tiny-model FILE` raised NotADirectoryError with a traceback."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"x")
    code, out = run_cli(["make-tiny-model", str(target)], capsys)
    assert code == 2
    assert "is a file" in out and "Traceback" not in out


def test_post_runs_with_a_typo_is_a_422_with_the_suggestion(tmp_path: Path, redis_url: str) -> None:
    """Pins: POST /v1/runs answered a mistyped key with pydantic's raw message."""
    from fastapi.testclient import TestClient

    from magsrl.trainer.app import create_app
    from magsrl.trainer.config import TrainerSettings

    settings = TrainerSettings(redis_url=redis_url, runs_dir=tmp_path / "runs")
    with TestClient(create_app(settings)) as trainer:
        resp = trainer.post("/v1/runs", json=typo_config())
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["message"] == "grpo: unknown key `gruop_size`; did you mean `group_size`?"
    assert error["param"] == "grpo"
