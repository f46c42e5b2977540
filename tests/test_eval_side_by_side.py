"""Side-by-side eval of several policies (``magsrl eval DATASET --policy URL1 --policy URL2``):
who competes under which label, and the joint report's paired statistics between policies.
Pure functions over records; the HTTP path is the ordinary eval's (test_eval_e2e.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from magsrl.eval.report import build_report
from magsrl.eval.side_by_side import contenders, relabel
from magsrl.proto.eval import ArmSpec, EvalRecord

ARM = ArmSpec(name="zoom-sr", zoom="auto", upscale="sr")


def record(sample: int, correct: bool) -> EvalRecord:
    return EvalRecord(
        key=f"s{sample}|zoom-sr",
        sample_id=f"s{sample}",
        arm="zoom-sr",
        dataset="d",
        question="q",
        gold="A",
        correct=correct,
        image="x.png",
        image_size=[10, 10],
    )


def test_contenders_pair_policies_with_protocols() -> None:
    """Pins the labels and pairing: one protocol per policy, in order; one for all; a
    count that fits neither is refused with how to fix it."""
    got = contenders(["http://a:8000", "http://b:8000"], ["deepeyes", "mini_o3"])
    assert [(c.label, c.protocol) for c in got] == [
        ("a-8000-deepeyes", "deepeyes"),
        ("b-8000-mini_o3", "mini_o3"),
    ]
    assert [c.protocol for c in contenders(["http://a", "http://b"], ["tags"])] == ["tags"] * 2
    same = contenders(["http://a:1", "http://a:1"], [])
    assert same[0].label != same[1].label  # the same URL twice still gets two folders
    with pytest.raises(ValueError, match="once per --policy"):
        contenders(["http://a", "http://b", "http://c"], ["tags", "tools"])


def test_joint_report_compares_policies_with_mcnemar() -> None:
    """Pins the comparison between checkpoints: every policy/arm pair is an arm of one
    report over the same samples, so the discordant counts and McNemar's test compare the
    policies sample by sample (and not two reports side by side)."""
    a = [record(i, True) for i in range(10)]
    b = [record(i, i < 4) for i in range(10)]
    arms_a, recs_a = relabel("deepeyes", [ARM], a)
    arms_b, recs_b = relabel("mini_o3", [ARM], b)
    report = build_report(
        recs_a + recs_b,
        arms_a + arms_b,
        [f"s{i}" for i in range(10)],
        dataset="d",
        dataset_kind="k",
        seed=0,
        limit=None,
        backend={},
        confidence=0.95,
        resamples=200,
        elapsed_s=0.0,
    )
    assert [s.arm.name for s in report.arms] == ["deepeyes/zoom-sr", "mini_o3/zoom-sr"]
    assert [s.accuracy.accuracy.value for s in report.arms] == [1.0, 0.4]
    (comparison,) = report.comparisons
    assert (comparison.a, comparison.b) == ("deepeyes/zoom-sr", "mini_o3/zoom-sr")
    assert (comparison.a_only, comparison.b_only) == (6, 0)
    assert comparison.mcnemar.p_value < 0.05


def test_cli_runs_each_policy_in_its_protocol_on_the_same_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins the CLI path end to end in-process (a scripted backend per policy): each
    policy is asked in its own protocol, both see the same seeded samples, each run keeps
    its own results folder, and one report compares them."""
    import argparse
    import json

    from magsrl.cli import eval as eval_cli
    from magsrl.eval import backends
    from magsrl.proto.policy import AnswerRequest, AnswerResponse, Usage

    asked: dict[str, list[tuple[str | None, str]]] = {}

    class Scripted:
        def __init__(self, config: Any, settings: Any) -> None:
            self.url = config.policy_url
            asked[self.url] = []

        async def describe(self) -> dict[str, str]:
            return {"kind": "policy", "url": self.url}

        async def answer(self, request: AnswerRequest) -> AnswerResponse:
            asked[self.url].append((request.protocol, request.question))
            return AnswerResponse(
                answer="x", raw_answer="x", rounds=[], model="m", usage=Usage(), timing_ms={}
            )

        async def close(self) -> None:
            return None

    monkeypatch.setattr(backends, "make_backend", Scripted)
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    out = tmp_path / "sbs"
    argv = ["eval", "synthetic", "--limit", "3", "--arms", "zoom-sr", "--out", str(out)]
    argv += ["--policy", "http://a:1", "--policy", "http://b:2"]
    argv += ["--protocol", "deepeyes", "--protocol", "mini_o3", "--synthetic-size", "256x192"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert {p for p, _ in asked["http://a:1"]} == {"deepeyes"}
    assert {p for p, _ in asked["http://b:2"]} == {"mini_o3"}
    assert sorted(q for _, q in asked["http://a:1"]) == sorted(q for _, q in asked["http://b:2"])
    assert (out / "a-1-deepeyes" / "results.jsonl").is_file()
    report = json.loads((out / "report.json").read_text())
    names = [a["arm"]["name"] for a in report["arms"]]
    assert names == ["a-1-deepeyes/zoom-sr", "b-2-mini_o3/zoom-sr"]
    assert len(report["comparisons"]) == 1
