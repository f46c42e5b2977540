"""bench/rollouts.py, smoke-run: its core function on the real tiny stack with 1 worker
and 2 jobs, so that the benchmark cannot silently rot when the worker, the queue or the
job format changes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "rollouts.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_rollouts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_rollouts"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_rollout_bench_runs_real_episodes_through_one_worker(
    tmp_path: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins a rollout benchmark that rots unseen: a job shape the worker rejects (every
    result an error, timed as if it were a rollout), a worker that never takes the run's
    jobs (the round times out), or figures that come back empty or nonsensical."""
    monkeypatch.setenv("MAGSRL_WEIGHTS_DIR", str(weights_dir))
    bench = load_bench()
    results = bench.measure(2, (1,), tmp_path)
    base = results["inline_baseline"]
    (row,) = results["rows"]
    assert base["failed"] == 0 and row["failed"] == 0  # real episodes, not error results
    assert row["workers"] == 1 and row["processes"] == 1
    for figures in (base, row):
        assert figures["rollouts_per_s"] > 0
        assert 0 < figures["latency_p50_ms"] <= figures["latency_p95_ms"]
        assert figures["mean_rounds"] >= 1
    assert row["vs_inline"] == pytest.approx(row["rollouts_per_s"] / base["rollouts_per_s"], 0.02)
    assert results["cpu_count"] and len(results["loadavg_start"]) == 3
    table = bench.table(results)
    assert "1 worker(s) via the queue" in table and "baseline" in table
