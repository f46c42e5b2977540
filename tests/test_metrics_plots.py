"""A run's metrics and plots (issue 17): steps counted from 1 as the progress bar counts
them, gaps where a step logged no value, and only plots of metrics the run has."""

from __future__ import annotations

import math
from pathlib import Path

from magsrl.trainer.metrics_log import MetricsLog, series


def test_a_step_without_loss_is_a_gap_not_a_joined_line() -> None:
    """Pins: loss.png joined points across a step with no loss (no gradient that step)."""
    rows = [{"step": 1, "loss": 0.5}, {"step": 2}, {"step": 3, "loss": 0.3}]
    steps, values = series(rows, "loss")
    assert steps == [1, 2, 3]
    assert values[0] == 0.5 and math.isnan(values[1]) and values[2] == 0.3


def test_truncate_keeps_the_steps_done(tmp_path: Path) -> None:
    """Pins: rows counted 0-7 while the bar, RunInfo.step and step-N.pt count 1-8; a resume
    from step-2.pt keeps the rows of steps 1 and 2."""
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.append(step, {"loss": float(step)})
    log.truncate(2)
    assert [r["step"] for r in log.rows()] == [1, 2]


def test_no_kl_plot_without_kl(tmp_path: Path) -> None:
    """Pins: kl.png promised for a beta: 0 run, which logs no kl; plots are written for the
    metrics logged, and loss.png is one of them even with a gap."""
    log = MetricsLog(tmp_path, tensorboard=False)
    log.append(1, {"loss": 0.2, "reward_mean": 0.1})
    log.append(2, {"reward_mean": 0.2})
    names = {p.name for p in log.plot(tmp_path / "final")}
    assert names == {"loss.png", "reward_mean.png"}
