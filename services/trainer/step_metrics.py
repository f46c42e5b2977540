"""A step's rollout instruments, from its results: rewards and accuracy, response lengths
and truncation, per-round lengths and zoom counts, box sizes, accuracy after a zoom vs
without, failures, and the policy-version lag (async_steps). Pure: the run loop merges these
with the learner's metrics into metrics.jsonl and TensorBoard."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from magsrl.proto.rollout import RolloutResult


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def rollout_metrics(results: Sequence[RolloutResult]) -> dict[str, float]:
    """Metrics over a step's results (failed ones included where they count: ``failed_rate``
    and the reward, which is 0 for them; the rest over the episodes that ran). Metrics with
    no episode to average (e.g. ``accuracy_zoomed`` in a step with no zoom) are left out."""
    if not results:
        return {}
    ran = [r for r in results if r.error is None]
    out: dict[str, float | None] = {
        "reward_mean": _mean([r.reward for r in results]),
        "reward_std": statistics.pstdev([r.reward for r in results]),
        "failed_rate": sum(r.error is not None for r in results) / len(results),
    }
    if ran:
        lengths = [float(r.completion_tokens) for r in ran]
        zoomed = [r for r in ran if r.zooms > 0]
        direct = [r for r in ran if r.zooms == 0]
        areas = [a for r in ran for a in r.box_areas]
        out.update(
            accuracy=_mean([float(r.correct) for r in ran]),
            zoom_rate=len(zoomed) / len(ran),
            zooms_per_episode=_mean([float(r.zooms) for r in ran]),
            zoom_errors=_mean([float(r.zoom_errors) for r in ran]),
            zooms_over_limit=_mean([float(r.zooms_over_limit) for r in ran]),
            format=_mean([r.components.get("format", 0.0) for r in ran]),
            completion_tokens=_mean(lengths),
            response_length_max=max(lengths),
            truncation_rate=_mean([float(r.truncated) for r in ran]),
            rounds=_mean([float(r.rounds) for r in ran]),
            box_area_mean=_mean(areas),
            accuracy_zoomed=_mean([float(r.correct) for r in zoomed]),
            accuracy_direct=_mean([float(r.correct) for r in direct]),
            # Re-render drift: should stay 0 (trajectory.retokenize_mismatch).
            retokenize_mismatch=_mean([float(r.retokenize_mismatch) for r in ran]),
        )
        most = max((len(r.round_tokens) for r in ran), default=0)
        for k in range(most):  # round k+1 over the episodes that reached it
            reached = [r for r in ran if len(r.round_tokens) > k]
            out[f"round{k + 1}_tokens"] = _mean([float(r.round_tokens[k]) for r in reached])
            out[f"round{k + 1}_zooms"] = _mean(
                [float(r.round_zooms[k]) for r in reached if len(r.round_zooms) > k]
            )
            out[f"round{k + 1}_reached"] = len(reached) / len(ran)
    return {k: float(v) for k, v in out.items() if v is not None}


def lag_metrics(results: Sequence[RolloutResult], version: int) -> dict[str, float]:
    """The policy-version lag of the results a step trains on (learner version minus the
    version each result was generated at): ``lag_mean``, ``lag_max`` and ``lag_frac`` (the
    share that lags at all). Always 0 with async_steps 0; at most async_steps otherwise."""
    if not results:
        return {}
    lags = [version - r.version for r in results]
    return {
        "lag_mean": statistics.fmean(lags),
        "lag_max": float(max(lags)),
        "lag_frac": sum(x > 0 for x in lags) / len(lags),
    }
