"""Curriculum files and the stratified pick: a small run must get the level mix asked for,
refilled from other levels when one runs short, and the file must survive a round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magsrl.data.curriculum import (
    CurriculumEntry,
    level_counts,
    parse_mix,
    quotas,
    read_curriculum,
    select_stratified,
    write_curriculum,
)
from magsrl.proto.judge import level_of


def entry(i: int, score: float, image: str = "/data/img.png") -> CurriculumEntry:
    zoom = int(score + 0.5)
    return CurriculumEntry(
        id=f"s{i}",
        image=image,
        question="q?",
        answer="a",
        zoom_score=zoom,
        level=level_of(zoom),
        raw_score=score,
        judge_method="heuristic",
    )


def pool(easy: int, medium: int, hard: int) -> list[CurriculumEntry]:
    scores = [2.0] * easy + [5.0] * medium + [9.0] * hard
    return [entry(i, s + i * 1e-3) for i, s in enumerate(scores)]


def test_parse_mix_normalises() -> None:
    assert parse_mix("easy=1,medium=2,hard=1") == {"easy": 0.25, "medium": 0.5, "hard": 0.25}
    assert parse_mix("hard=1") == {"easy": 0.0, "medium": 0.0, "hard": 1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("easy=1,tricky=2", "level=weight", id="unknown-level"),
        pytest.param("easy", "level=weight", id="no-weight"),
        pytest.param("easy=x", "not a number", id="not-a-number"),
        pytest.param("easy=0,hard=0", "positive sum", id="all-zero"),
        pytest.param("easy=-1,hard=2", "positive sum", id="negative"),
    ],
)
def test_parse_mix_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


def test_quotas_follow_the_mix() -> None:
    """40 samples at thirds: 14/13/13 by largest remainder, summing to exactly 40."""
    mix = parse_mix("easy=1,medium=1,hard=1")
    take = quotas(40, mix, {"easy": 100, "medium": 100, "hard": 100})
    assert sum(take.values()) == 40
    assert sorted(take.values()) == [13, 13, 14]


def test_quotas_refill_a_short_level() -> None:
    """Only 3 hard samples exist: the other levels make up the difference."""
    mix = parse_mix("easy=1,medium=1,hard=2")
    take = quotas(20, mix, {"easy": 50, "medium": 50, "hard": 3})
    assert take["hard"] == 3
    assert sum(take.values()) == 20


def test_quotas_cap_at_what_exists() -> None:
    take = quotas(40, parse_mix("easy=1"), {"easy": 5, "medium": 2, "hard": 0})
    assert take == {"easy": 5, "medium": 2, "hard": 0}


def test_select_is_stratified_sorted_and_seeded() -> None:
    entries = pool(30, 30, 30)
    mix = parse_mix("easy=1,medium=2,hard=1")
    chosen = select_stratified(entries, 20, mix, seed=3)
    assert level_counts(chosen) == {"easy": 5, "medium": 10, "hard": 5}
    assert [e.raw_score for e in chosen] == sorted(e.raw_score for e in chosen)
    assert [e.id for e in select_stratified(entries, 20, mix, seed=3)] == [e.id for e in chosen]
    assert [e.id for e in select_stratified(entries, 20, mix, seed=4)] != [e.id for e in chosen]


def test_select_none_keeps_everything() -> None:
    entries = pool(2, 3, 4)
    assert len(select_stratified(entries, None)) == 9


def test_round_trip_with_relative_images(tmp_path: Path) -> None:
    """Images are written relative to the file, so a moved folder still loads."""
    images = tmp_path / "set" / "images"
    images.mkdir(parents=True)
    (images / "a.png").write_bytes(b"x")
    entries = [entry(0, 2.0, str(images / "a.png")), entry(1, 9.0, str(images / "a.png"))]
    path = tmp_path / "set" / "cur.jsonl"
    assert write_curriculum(path, entries) == 2
    row = json.loads(path.read_text().splitlines()[0])
    assert row["image"] == "images/a.png"
    assert row["level"] == "easy" and row["zoom_score"] == 2
    moved = tmp_path / "moved"
    (tmp_path / "set").rename(moved)
    back = read_curriculum(moved / "cur.jsonl")
    assert [e.id for e in back] == ["s0", "s1"]
    assert Path(back[0].image) == (moved / "images" / "a.png").resolve()
    assert back[1].level == "hard"


def test_read_refuses_a_plain_dataset(tmp_path: Path) -> None:
    """A dataset file given where a curriculum is expected says how to make one."""
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"id": "a", "image": "x.png", "question": "q", "answer": "a"}))
    with pytest.raises(ValueError, match="magsrl curriculum"):
        read_curriculum(path)


@pytest.mark.slow  # starts a judge process
def test_curriculum_cli_through_the_judge(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`magsrl curriculum` end to end: a synthetic set scored by a real judge process, a
    stratified pick written, and a second run served from the judge's cache."""
    from magsrl.cli import main
    from magsrl.data.synth import SynthConfig, generate
    from tests.conftest import start_service

    dataset = generate(18, tmp_path / "synth", SynthConfig(width=640, height=480, seed=3))
    judge = start_service("judge", tmp_path / "judge", {"MAGSRL_REDIS_URL": redis_url})
    out = tmp_path / "cur.jsonl"
    argv = ["curriculum", str(dataset), "--judge", "heuristic", "--select", "9"]
    argv += ["--out", str(out), "--judge-url", judge.url]
    try:
        with pytest.raises(SystemExit) as first:
            main(argv)
        assert first.value.code == 0
        entries = read_curriculum(out)
        assert len(entries) == 9
        assert all(Path(e.image).is_file() for e in entries)
        assert [e.raw_score for e in entries] == sorted(e.raw_score for e in entries)
        capsys.readouterr()
        with pytest.raises(SystemExit) as second:
            main(argv)
        assert second.value.code == 0
        assert "18 from the judge's cache" in capsys.readouterr().out
    finally:
        judge.supervisor.stop()


def test_curriculum_cli_judge_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No judge running: a message that says how to start one, and a non-zero exit."""
    from magsrl.cli import main
    from magsrl.data.synth import SynthConfig, generate

    dataset = generate(2, tmp_path / "synth", SynthConfig(width=320, height=240))
    with pytest.raises(SystemExit) as exc:
        main(["curriculum", str(dataset), "--judge-url", "http://127.0.0.1:9"])
    assert exc.value.code == 1
    assert "magsrl serve judge" in capsys.readouterr().out
