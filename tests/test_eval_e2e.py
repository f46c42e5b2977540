"""``magsrl eval`` through real services: the four arms on the synthetic set against
``magsrl up --model tiny``; a tiny model taught to zoom, so zoom rates, boxes, crop methods
and paired statistics have something to measure; a run SIGKILLed mid-way and resumed; the
client-side zoom loop against an OpenAI-compatible endpoint; and the failures a user meets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from magsrl.policy.scripted import build_scripted_model
from magsrl.proto.eval import EvalRecord, EvalReport
from tests.conftest import RunningService, start_policy
from tests.test_up import UP_TIMEOUT_S, kill_stack, read_until, start_up
from tests.test_zoom_loop_e2e import QUESTION, rocket_png, script

pytestmark = pytest.mark.slow  # every test runs the eval CLI or services as processes

FOUR_ARMS = "zoom-sr,zoom-bicubic,zoom-crop,no-zoom"
SAMPLES = 6


def eval_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "magsrl.cli", "eval", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out


def records(out: Path) -> list[EvalRecord]:
    return [
        EvalRecord.model_validate_json(line)
        for line in (out / "results.jsonl").read_text().splitlines()
        if line.strip()
    ]


def check_report_files(out: Path, arms: list[str], samples: int) -> EvalReport:
    report = EvalReport.model_validate_json((out / "report.json").read_text())
    assert [a.arm.name for a in report.arms] == arms
    assert all(a.accuracy.n == samples for a in report.arms)
    assert len(report.comparisons) == len(arms) * (len(arms) - 1) // 2
    markdown = (out / "report.md").read_text()
    for arm in arms:
        assert f"| {arm} |" in markdown
    with Image.open(out / "accuracy.png") as plot:
        assert plot.format == "PNG"
    keys = Counter(r.key for r in records(out))
    assert len(keys) == samples * len(arms) and set(keys.values()) == {1}
    return report


@pytest.mark.slow
def test_four_arms_on_synthetic_against_magsrl_up(tmp_path: Path) -> None:
    up = start_up(tmp_path, "--model", "tiny")
    try:
        printed = read_until(up, "Ctrl-C stops everything", UP_TIMEOUT_S)
        found = re.search(r"--url\s+(http://127\.0\.0\.1:\d+)", printed)
        assert found is not None, printed
        out = tmp_path / "eval"
        code, text = finish(
            eval_cli(
                "synthetic",
                "--arms",
                FOUR_ARMS,
                "--limit",
                "4",
                "--seed",
                "3",
                "--out",
                str(out),
                "--synthetic-size",
                "512x384",
                "--policy",
                found.group(1),
                cwd=tmp_path,
            )
        )
        assert code == 0, text
        report = check_report_files(out, FOUR_ARMS.split(","), 4)
        assert report.seed == 3 and report.dataset_kind == "synthetic"
        assert report.backend["model"] == "tiny"
        assert "McNemar" in text and "4 samples, seed 3" in text
        rows = records(out)
        # The synthetic set's multiple-choice options were asked in the seed's order.
        asked = [r for r in rows if r.options]
        assert asked and all(r.gold in "ABCDEFGH" for r in asked)
        assert all(r.error is None and r.latency_ms > 0 for r in rows)
        assert all((out / r.thumb).exists() for r in rows if r.thumb)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        finally:
            kill_stack(up)


# ---- a tiny model that really zooms --------------------------------------------------
@pytest.fixture(scope="module")
def zooming_policy(
    tmp_path_factory: pytest.TempPathFactory, magnifier: RunningService, tiny_model_dir: Path
) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("eval-zooming")
    model = tmp / "model"
    build_scripted_model(tiny_model_dir, model, magnifier.url, script("tags"))
    service = start_policy(tmp, magnifier.url, str(model))
    yield service
    service.supervisor.stop()


@pytest.fixture(scope="module")
def rocket_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six questions the scripted model answers ("red") after zooming, in two categories."""
    folder = tmp_path_factory.mktemp("rocket-set")
    (folder / "rocket.png").write_bytes(rocket_png())
    rows = [
        {
            "id": f"rocket-{i}",
            "image": "rocket.png",
            "question": QUESTION,
            "answer": "red",
            "category": "sign" if i % 2 else "colour",
        }
        for i in range(SAMPLES)
    ]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_zooming_model_fills_the_zoom_statistics(
    zooming_policy: RunningService, rocket_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    code, text = finish(
        eval_cli(
            str(rocket_set),
            "--arms",
            FOUR_ARMS,
            "--out",
            str(out),
            "--policy",
            zooming_policy.url,
            "--concurrency",
            "3",
            cwd=tmp_path,
        )
    )
    assert code == 0, text
    report = check_report_files(out, FOUR_ARMS.split(","), SAMPLES)
    by_arm = {a.arm.name: a for a in report.arms}
    rows = records(out)
    for arm, method in (("zoom-sr", "sr"), ("zoom-bicubic", "bicubic"), ("zoom-crop", "crop")):
        stats = by_arm[arm]
        assert (stats.zoom_rate, stats.mean_zooms, stats.accuracy.correct) == (1.0, 1.0, SAMPLES)
        assert stats.boxes.n == SAMPLES and 0 < (stats.boxes.median_fraction or 0) < 1
        assert stats.latency.p50_ms is not None and stats.latency.magnifier_ms
        crops = [z.crop for r in rows if r.arm == arm for z in r.rounds[0].zooms]
        assert crops and all(c is not None and c.method == method for c in crops)
    assert by_arm["no-zoom"].zoom_rate == 0.0
    assert all(len(r.rounds) == 1 for r in rows if r.arm == "no-zoom")
    # The comparisons are the records' own discordant counts.
    for pair in report.comparisons:
        right = {(r.sample_id, r.arm): r.correct for r in rows}
        a_only = sum(
            right[(f"rocket-{i}", pair.a)] and not right[(f"rocket-{i}", pair.b)]
            for i in range(SAMPLES)
        )
        assert pair.a_only == a_only and pair.n == SAMPLES
    assert set(report.categories) == {"colour", "sign"}


def test_a_killed_run_resumes_without_duplicates_or_gaps(
    zooming_policy: RunningService, rocket_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    args = (
        str(rocket_set),
        "--arms",
        "zoom-sr,no-zoom",
        "--out",
        str(out),
        "--policy",
        zooming_policy.url,
        "--concurrency",
        "1",
    )
    first = eval_cli(*args, cwd=tmp_path)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no clean-up at all: the worst interruption
    first.wait(timeout=30)
    before = results.read_bytes()
    done_before = [r.key for r in records(out)]
    assert 3 <= len(done_before) < 2 * SAMPLES, "the run finished before it was killed"

    code, text = finish(eval_cli(*args, cwd=tmp_path))
    assert code == 0, text
    after = results.read_bytes()
    cut = before[: before.rfind(b"\n") + 1]  # a line torn by the kill is redone
    assert after.startswith(cut)  # what was finished is neither rewritten nor repeated
    assert f"{len(cut.splitlines())} from earlier runs" in text
    check_report_files(out, ["zoom-sr", "no-zoom"], SAMPLES)


def test_client_side_loop_against_an_openai_endpoint(
    zooming_policy: RunningService, magnifier: RunningService, rocket_set: Path, tmp_path: Path
) -> None:
    """The policy's OpenAI API stands in for vLLM: the zoom loop runs in the eval process."""
    with zooming_policy.client() as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
    out = tmp_path / "eval"
    code, text = finish(
        eval_cli(
            str(rocket_set),
            "--arms",
            "zoom-bicubic",
            "--limit",
            "2",
            "--out",
            str(out),
            "--openai",
            f"{zooming_policy.url}/v1",
            "--model",
            model,
            "--magnifier",
            magnifier.url,
            cwd=tmp_path,
        )
    )
    assert code == 0, text
    report = check_report_files(out, ["zoom-bicubic"], 2)
    assert report.backend["kind"] == "openai"
    rows = records(out)
    assert all(r.correct and r.zooms == 1 for r in rows)
    assert all(r.rounds[0].zooms[0].crop.method == "bicubic" for r in rows)  # type: ignore[union-attr]


# ---- what a user gets wrong ------------------------------------------------------------
def test_unreachable_policy_stops_with_a_clear_message(rocket_set: Path, tmp_path: Path) -> None:
    code, text = finish(
        eval_cli(
            str(rocket_set),
            "--out",
            str(tmp_path / "e"),
            "--policy",
            "http://127.0.0.1:9",
            cwd=tmp_path,
        )
    )
    assert code == 1
    assert "unreachable" in text and "magsrl up" in text
    assert not (tmp_path / "e" / "results.jsonl").exists()


def test_bad_arguments_exit_2_with_the_fix(rocket_set: Path, tmp_path: Path) -> None:
    code, text = finish(eval_cli(str(rocket_set), "--arms", "zoom-hq", cwd=tmp_path))
    assert code == 2 and "unknown arm 'zoom-hq'" in text and "zoom-sr" in text
    code, text = finish(eval_cli(str(tmp_path / "nothing.jsonl"), cwd=tmp_path))
    assert code == 2 and "no such file or folder" in text
    code, text = finish(eval_cli(str(rocket_set), "--openai", "http://x/v1", cwd=tmp_path))
    assert code == 2 and "--model NAME" in text


def test_an_unreadable_image_is_recorded_and_the_run_goes_on(
    zooming_policy: RunningService, rocket_set: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    rows = [json.loads(line) for line in rocket_set.read_text().splitlines()][:2]
    rows[0]["image"] = str(rocket_set.parent / "rocket.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    rows[1]["image"] = str(tmp_path / "broken.png")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    code, text = finish(
        eval_cli(
            str(data),
            "--arms",
            "zoom-sr",
            "--out",
            str(out),
            "--policy",
            zooming_policy.url,
            cwd=tmp_path,
        )
    )
    assert code == 0, text
    by_id = {r.sample_id: r for r in records(out)}
    assert by_id["rocket-0"].correct and by_id["rocket-0"].error is None
    assert not by_id["rocket-1"].correct
    assert "cannot read the image" in (by_id["rocket-1"].error or "")
    assert "1 failed" in text
