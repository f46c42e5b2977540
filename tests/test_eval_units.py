"""The eval harness's plain parts: arms, the seeded draw and option shuffle, the results
file's resume rules, and the report built from known records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from magsrl.data.sample import Sample
from magsrl.data.scorers import score
from magsrl.eval.arms import parse_arms
from magsrl.eval.config import EvalConfig
from magsrl.eval.report import build_report, to_markdown, write_report
from magsrl.eval.results import ResultsConflict, ResultsFile, check_manifest
from magsrl.eval.samples import draw, shuffle_options, synthetic_set
from magsrl.proto.eval import EvalRecord, EvalReport
from magsrl.proto.policy import Round, Zoom


# ---- arms ------------------------------------------------------------------------------
def test_arms_map_to_answer_settings_in_the_given_order() -> None:
    arms = parse_arms("zoom-sr, no-zoom,force-crop,zoom-bicubic")
    assert [(a.name, a.zoom, a.upscale) for a in arms] == [
        ("zoom-sr", "auto", "sr"),
        ("no-zoom", "off", "sr"),
        ("force-crop", "force", "crop"),
        ("zoom-bicubic", "auto", "bicubic"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zoom-lanczos", "unknown arm 'zoom-lanczos'; expected one of zoom-sr"),
        ("zoom-sr,zoom-sr", "named twice"),
        (" , ", "name at least one arm"),
    ],
)
def test_bad_arms_say_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_arms(text)


# ---- samples ---------------------------------------------------------------------------
def _mc(sample_id: str, answer: str = "B") -> Sample:
    return Sample(
        id=sample_id,
        image="x.png",
        question="Which colour?",
        answer=answer,
        options=["red", "green", "blue", "white"],
        scorer="mc",
    )


def test_shuffled_options_keep_the_gold_option_text() -> None:
    moved = 0
    for i in range(40):
        sample = _mc(f"s{i}")
        asked = shuffle_options(sample, seed=5)
        assert sorted(asked.options or []) == sorted(sample.options or [])
        letter = asked.answer
        assert asked.options[ord(letter) - ord("A")] == "green"  # type: ignore[index]
        assert score(asked, f"The answer is ({letter}).")
        assert score(asked, "green")
        moved += letter != "B"
        assert shuffle_options(sample, seed=5) == asked  # a function of seed and id
    assert moved > 20  # the gold letter really moves around (3/4 of the time expected)


def test_shuffle_strips_labels_and_maps_a_text_answer() -> None:
    sample = Sample(
        id="v1",
        image="x.png",
        question="q",
        answer="blue",
        options=["(A) red", "(B) blue"],
        scorer="mc",
    )
    asked = shuffle_options(sample, seed=0)
    assert sorted(asked.options or []) == ["blue", "red"]
    assert asked.options[ord(asked.answer) - ord("A")] == "blue"  # type: ignore[index]


def test_draw_is_seeded_keeps_order_and_needs_unique_ids() -> None:
    samples = [_mc(f"s{i:02d}") for i in range(30)]
    first = draw(samples, 8, seed=1)
    assert [s.id for s in first] == sorted(s.id for s in first)
    assert draw(samples, 8, seed=1) == first
    assert draw(samples, 8, seed=2) != first
    assert draw(samples, None, seed=1) == samples
    assert draw(samples, 100, seed=1) == samples
    with pytest.raises(ValueError, match="ids repeat"):
        draw([_mc("a"), _mc("a")], None, seed=0)


def test_synthetic_set_is_made_once_per_config(tmp_path: Path) -> None:
    path = synthetic_set(tmp_path, 3, seed=4, size=(256, 192))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3
    image = tmp_path / "synthetic" / rows[0]["image"]
    stamp = image.stat().st_mtime_ns
    assert synthetic_set(tmp_path, 3, seed=4, size=(256, 192)) == path
    assert image.stat().st_mtime_ns == stamp  # reused, not redrawn
    path = synthetic_set(tmp_path, 3, seed=5, size=(256, 192))
    assert not image.exists()  # another seed: the old scenes are gone, not mixed in
    assert all(json.loads(line)["id"].startswith("synth-5-") for line in path.open())


# ---- results file and manifest --------------------------------------------------------
def _record(sample: str, arm: str, correct: bool, **extra: object) -> EvalRecord:
    fields: dict[str, object] = {
        "key": f"{sample}|{arm}",
        "sample_id": sample,
        "arm": arm,
        "dataset": "t",
        "question": "q",
        "gold": "a",
        "correct": correct,
        "image": "x.png",
        "image_size": [100, 100],
        "latency_ms": 10.0,
        **extra,
    }
    return EvalRecord.model_validate(fields)


def test_results_file_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path)
    results.append(_record("s1", "zoom-sr", True))
    results.append(_record("s2", "zoom-sr", False))
    results.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "s3|zoom-sr", "sample_')  # killed mid-write
    loaded = ResultsFile(path).load()
    assert sorted(loaded) == ["s1|zoom-sr", "s2|zoom-sr"]
    assert path.read_bytes() == whole  # the torn tail is gone; what was whole is kept


def test_results_file_keeps_a_complete_line_missing_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(_record("s1", "no-zoom", True).model_dump_json())
    assert list(ResultsFile(path).load()) == ["s1|no-zoom"]
    assert path.read_text().endswith("\n")  # the next append starts on its own line


def test_results_file_refuses_a_bad_line_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(
        '{"not": "a record"}\n' + _record("s1", "zoom-sr", True).model_dump_json() + "\n"
    )
    with pytest.raises(ValueError, match=r"results.jsonl:1: not an eval record"):
        ResultsFile(path).load()


def _config(tmp_path: Path, **overrides: object) -> EvalConfig:
    fields: dict[str, object] = {
        "dataset": "synthetic",
        "arms": parse_arms("zoom-sr,no-zoom"),
        "out": tmp_path,
        "limit": 4,
        "seed": 1,
        **overrides,
    }
    return EvalConfig.model_validate(fields)


def test_manifest_refuses_to_mix_experiments_and_fresh_starts_over(tmp_path: Path) -> None:
    check_manifest(tmp_path, _config(tmp_path), fresh=False)
    ResultsFile(tmp_path / "results.jsonl").append(_record("s1", "zoom-sr", True))
    # Arms and concurrency may change between runs; the seed may not.
    check_manifest(tmp_path, _config(tmp_path, concurrency=9, arms=parse_arms("zoom-crop")), False)
    with pytest.raises(ResultsConflict, match=r"seed: 1 there, 2 now.*--fresh"):
        check_manifest(tmp_path, _config(tmp_path, seed=2), fresh=False)
    check_manifest(tmp_path, _config(tmp_path, seed=2), fresh=True)
    assert not (tmp_path / "results.jsonl").exists()
    assert (tmp_path / "results.jsonl.old").exists()  # moved aside, never deleted
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 2


def test_openai_backend_needs_its_url_and_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--openai URL.*--model NAME"):
        _config(tmp_path, backend="openai").check()


# ---- the report ------------------------------------------------------------------------
def _zoomed(box: list[int]) -> list[Round]:
    return [Round(text="<zoom>", zooms=[Zoom(box=box)]), Round(text="<answer>a</answer>")]


def _records() -> list[EvalRecord]:
    """Ten samples under two arms: sr right on 1-8, crop right on 1-4 and 9; sample 10 failed
    under crop. Categories alternate."""
    out = []
    for i in range(1, 11):
        category = "odd" if i % 2 else "even"
        out.append(
            _record(
                f"s{i}",
                "zoom-sr",
                i <= 8,
                category=category,
                zooms=1,
                box_fractions=[0.01 * i],
                rounds=_zoomed([0, 0, 10, 10 * i]),
                timing_ms={"total": 100.0 * i, "model": 60.0, "magnifier": 30.0, "overhead": 10.0},
                latency_ms=100.0 * i,
            )
        )
        error = "503: down" if i == 10 else None
        out.append(_record(f"s{i}", "no-zoom", i <= 4 or i == 9, category=category, error=error))
    return out


def _report(records: list[EvalRecord]) -> EvalReport:
    return build_report(
        records,
        parse_arms("zoom-sr,no-zoom"),
        [f"s{i}" for i in range(1, 11)],
        dataset="t.jsonl",
        dataset_kind="jsonl",
        seed=0,
        limit=None,
        backend={"kind": "policy"},
        confidence=0.95,
        resamples=2000,
        elapsed_s=1.0,
    )


def test_report_counts_match_the_records() -> None:
    report = _report(_records())
    sr, off = report.arms
    assert (sr.accuracy.n, sr.accuracy.correct, sr.accuracy.accuracy.value) == (10, 8, 0.8)
    assert (off.accuracy.correct, off.errors) == (5, 1)  # the failure counts as wrong
    assert (sr.zoom_rate, sr.mean_zooms, off.zoom_rate) == (1.0, 1.0, 0.0)
    assert sr.boxes.n == 10
    assert sr.boxes.median_fraction == pytest.approx(0.055)
    assert sr.latency.p50_ms == pytest.approx(550.0)
    assert sr.latency.p95_ms == pytest.approx(955.0)  # linear between 900 and 1000
    assert (sr.latency.model_ms, sr.latency.magnifier_ms) == (60.0, 30.0)
    assert off.latency.p50_ms == pytest.approx(10.0)  # the failed sample is left out
    (pair,) = report.comparisons
    # sr right & crop wrong: 5, 6, 7, 8; crop right & sr wrong: 9; both right: 1-4; 10 both wrong.
    assert (pair.n, pair.both_right, pair.a_only, pair.b_only, pair.both_wrong) == (10, 4, 4, 1, 1)
    assert pair.mcnemar.method == "exact"
    assert pair.mcnemar.p_value == pytest.approx(2 * (1 + 5) / 2**5, abs=1e-6)  # 0.375
    assert pair.difference.value == pytest.approx(0.3)
    assert pair.difference.low <= 0.3 <= pair.difference.high
    assert report.categories["odd"]["zoom-sr"].n == 5
    assert report.categories["odd"]["no-zoom"].correct == 3  # s1, s3, s9
    a = sr.accuracy.accuracy
    assert a.low < a.value < a.high


def test_report_covers_only_the_asked_samples_and_arms() -> None:
    extra = [_record("s99", "zoom-sr", True), _record("s1", "zoom-crop", True)]
    assert _report(_records() + extra).model_dump(exclude={"created"}) == _report(
        _records()
    ).model_dump(exclude={"created"})


def test_report_files(tmp_path: Path) -> None:
    report = _report(_records())
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "accuracy.png"]
    assert EvalReport.model_validate_json(paths[0].read_text()) == report
    markdown = paths[1].read_text()
    assert "| zoom-sr | auto | sr | 80.0 [" in markdown
    assert "| zoom-sr vs no-zoom | 10 | 4 | 1 | +30.0 [" in markdown
    assert "| odd | 80.0 (n=5) | 60.0 (n=5) |" in markdown
    assert markdown == to_markdown(report)
    with Image.open(paths[2]) as plot:
        assert plot.format == "PNG" and plot.width > 300


def test_thumbnails_are_upright_like_the_policy_sees_them(tmp_path: Path) -> None:
    from magsrl.eval.config import EvalSettings
    from magsrl.eval.runner import ImageCache

    # Stored 300x200 with EXIF orientation 6: shown (and boxed by the policy) as 200x300.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (300, 200), "red").save(path, exif=exif)
    sample = Sample(id="phone", image=str(path), question="q", answer="a")
    info = ImageCache(tmp_path, EvalSettings())._read(sample)
    assert info.size == (200, 300)
    with Image.open(tmp_path / (info.thumb or "")) as thumb:
        assert thumb.size == (200, 300)


def test_synthetic_size_only_binds_synthetic_runs(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("")
    config = _config(tmp_path, dataset=str(data))
    check_manifest(tmp_path, config, fresh=False)
    ResultsFile(tmp_path / "results.jsonl").append(_record("s1", "zoom-sr", True))
    check_manifest(tmp_path, _config(tmp_path, dataset=str(data), synthetic_size=(64, 64)), False)
