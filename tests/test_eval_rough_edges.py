"""Eval's rough edges (issue 17): an ETA that jumped between 4 minutes and 1 h 18, a resumed
report stating only the resumed part's time, a no-zoom row showing upscale `sr`, and a
plot whose axis was 0-1 while its labels said %."""

from __future__ import annotations

from pathlib import Path

from magsrl.eval.report import percent_bars, to_markdown
from magsrl.eval.runner import Eta, add_run_time
from tests.test_eval_units import _records, _report


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_holds_steady_through_bursts() -> None:
    """Pins: the ETA swung by 20x as cheap no-zoom records and slow zoom-sr records landed
    in bursts (rich's 30-second speed window)."""
    clock = Clock()
    eta = Eta(200, clock=clock)  # 50 samples x 4 arms: done at 600 s
    finishes = []
    # Each sample: a no-zoom record after 1 s, then three zoom records together after 11 s.
    for _ in range(50):
        clock.now += 1.0
        eta.advance()
        finishes.append(clock.now + (eta.remaining_s() or 0.0))
        clock.now += 11.0
        eta.advance(3)
        finishes.append(clock.now + (eta.remaining_s() or 0.0))
    # The predicted end stays within 10% of the true one (600 s) from the 5th sample on.
    assert all(540 <= f <= 660 for f in finishes[10:]), finishes[10:]
    assert eta.text().startswith("ETA ")


def test_eta_waits_for_a_few_records() -> None:
    """Pins: an ETA from one record (a wild guess) shown as if it were known."""
    clock = Clock()
    eta = Eta(100, clock=clock)
    clock.now = 5.0
    eta.advance()
    assert eta.remaining_s() is None and eta.text() == "ETA -"


def test_resumed_runs_add_up_their_time(tmp_path: Path) -> None:
    """Pins: a resumed report stated only the resumed part's time."""
    assert add_run_time(tmp_path, 100.0, earlier_records=0) == (100.0, 1)
    assert add_run_time(tmp_path, 40.0, earlier_records=12) == (140.0, 2)
    assert add_run_time(tmp_path, 5.0, earlier_records=0) == (5.0, 1)  # a fresh file
    old = tmp_path / "old"  # results from before the ledger
    old.mkdir()
    assert add_run_time(old, 5.0, earlier_records=3) == (None, 2)


def test_report_states_every_run_and_no_upscale_without_zoom() -> None:
    """Pins: `this run took 1 s` after a resume, and `| no-zoom | off | sr |`."""
    report = _report(_records()).model_copy(update={"total_elapsed_s": 140.0, "runs": 2})
    markdown = to_markdown(report)
    assert "2 runs (resumed): 140 s in all, the last 1 s" in markdown
    assert "| no-zoom | off | - |" in markdown
    assert "| zoom-sr | auto | sr |" in markdown


def test_plot_values_are_percent() -> None:
    """Pins: bars plotted on 0-1 under labels in %."""
    names, values, errors = percent_bars(_report(_records()))
    assert names == ["zoom-sr", "no-zoom"]
    assert values[0] == 80.0
    assert all(e >= 0 for row in errors for e in row) and max(errors[1]) > 1
