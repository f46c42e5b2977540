"""The turn limit an eval's episodes ran under, in ``report.json`` (per arm) and in the
manifest: the config's ``max_rounds`` when set, else the protocol's own (the config's
protocol, or the one the policy serves), one round with zoom off. The CLI path runs
in-process against a scripted backend; the policy backend's ``describe`` against a
scripted policy over HTTP (``tests.fakes.episode.FakePolicy``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from magsrl.proto.episode import ServedOptions
from magsrl.proto.policy import AnswerRequest, AnswerResponse, Usage


def run_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: str | None, *extra: str
) -> tuple[dict[str, Any], Path]:
    """``magsrl eval synthetic ... extra`` against a backend that serves ``served``."""
    from magsrl.cli import eval as eval_cli
    from magsrl.eval import backends

    class Scripted:
        def __init__(self, config: Any, settings: Any) -> None:
            self.url = config.policy_url

        async def describe(self) -> dict[str, str]:
            about = {"kind": "policy", "url": self.url, "model": "m"}
            return {**about, "protocol": served} if served else about

        async def answer(self, request: AnswerRequest) -> AnswerResponse:
            return AnswerResponse(
                answer="x", raw_answer="x", rounds=[], model="m", usage=Usage(), timing_ms={}
            )

        async def close(self) -> None:
            return None

    monkeypatch.setattr(backends, "make_backend", Scripted)
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    out = tmp_path / "out"
    argv = ["eval", "synthetic", "--limit", "2", "--out", str(out), "--synthetic-size", "256x192"]
    args = parser.parse_args([*argv, *extra])
    assert args.func(args) == 0
    return json.loads((out / "report.json").read_text()), out


def limits(report: dict[str, Any]) -> dict[str, tuple[int | None, str]]:
    return {a["arm"]["name"]: (a["max_rounds"], a["max_rounds_from"]) for a in report["arms"]}


def test_report_records_the_protocols_own_turn_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins report.json and the manifest saying max_rounds 2 (EpisodeOptions' default)
    when the episodes ran Mini-o3's own 12 turns: the report now gives each arm its
    effective limit and where it came from (1 with zoom off), and the markdown says so."""
    report, out = run_cli(
        tmp_path, monkeypatch, None, "--protocol", "mini_o3", "--arms", "zoom-sr,no-zoom"
    )
    got = limits(report)
    assert got["zoom-sr"][0] == 12 and "mini_o3" in got["zoom-sr"][1]
    assert got["no-zoom"] == (1, "zoom off: one round")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["max_rounds"] == 12 and "mini_o3" in manifest["max_rounds_from"]
    assert "Turn limit: zoom-sr 12 (protocol mini_o3" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("served", "extra", "expected", "source"),
    [
        pytest.param("deepeyes", (), 5, "policy's setting", id="the-policy-serves-deepeyes"),
        pytest.param("tools", ("--max-rounds", "3"), 3, "eval config", id="set-in-the-config"),
        pytest.param(None, (), None, "did not say", id="unknown"),
        pytest.param("auto", (), 2, "magsrl_tags", id="auto-by-model-name"),
    ],
)
def test_report_says_where_the_limit_came_from(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    served: str | None,
    extra: tuple[str, ...],
    expected: int | None,
    source: str,
) -> None:
    """Pins the unset limit on a policy that picks the protocol: the protocol it serves
    (DeepEyes: 5), the config's --max-rounds over any protocol, and "unknown" rather than
    a made-up 2 when the policy does not say."""
    report, _ = run_cli(tmp_path, monkeypatch, served, "--arms", "zoom-sr", *extra)
    limit, where = limits(report)["zoom-sr"]
    assert limit == expected and source in where


def test_side_by_side_report_gives_each_policy_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins the joint report: each policy/arm pair under its own protocol's limit."""
    report, _ = run_cli(
        tmp_path,
        monkeypatch,
        None,
        "--arms",
        "zoom-sr",
        *("--policy", "http://a:1", "--policy", "http://b:2"),
        *("--protocol", "deepeyes", "--protocol", "mini_o3"),
    )
    assert {k: v[0] for k, v in limits(report).items()} == {
        "a-1-deepeyes/zoom-sr": 5,
        "b-2-mini_o3/zoom-sr": 12,
    }


def test_an_older_manifest_resumes(tmp_path: Path) -> None:
    """Pins resume after the fix: a manifest written before (max_rounds 2 for an unset
    limit, no max_rounds_from) still resumes an unset-limit eval; one with another
    explicit limit is still refused."""
    from magsrl.eval.results import ResultsConflict, check_manifest, manifest_of
    from magsrl.proto.eval import ArmSpec, EvalConfig

    arm = ArmSpec(name="zoom-sr", zoom="auto", upscale="sr")
    config = EvalConfig(dataset="synthetic", arms=[arm], out=tmp_path)
    old = {k: v for k, v in manifest_of(config).items() if k != "max_rounds_from"}
    assert old["max_rounds"] is None
    (tmp_path / "manifest.json").write_text(json.dumps({**old, "max_rounds": 2}))
    (tmp_path / "results.jsonl").write_text("")
    check_manifest(tmp_path, config, fresh=False)
    (tmp_path / "manifest.json").write_text(json.dumps({**old, "max_rounds": 4}))
    with pytest.raises(ResultsConflict, match="max_rounds"):
        check_manifest(tmp_path, config, fresh=False)


def test_policy_backend_reports_the_protocol_it_serves() -> None:
    """Pins describe(): the policy's served protocol comes from /v1/policy/info, so an
    unset limit can be named in the report."""
    from magsrl.clients.policy import PolicyClient
    from magsrl.eval.backends import PolicyBackend
    from magsrl.eval.config import EvalSettings
    from magsrl.proto.eval import ArmSpec, EvalConfig
    from tests.fakes.episode import FakePolicy

    fake = FakePolicy("m", "qwen2_5_vl", [], served=ServedOptions(protocol="mini_o3"))
    arm = ArmSpec(name="zoom-sr", zoom="auto", upscale="sr")
    config = EvalConfig(
        dataset="synthetic", arms=[arm], out=Path("unused"), policy_url="http://policy.test"
    )
    backend = PolicyBackend(config, EvalSettings())  # type: ignore[call-arg]

    async def describe() -> dict[str, str]:
        await backend.client.http.aclose()
        backend.client = PolicyClient("http://policy.test", client=fake.client())
        try:
            return await backend.describe()
        finally:
            await backend.close()

    assert asyncio.run(describe())["protocol"] == "mini_o3"
