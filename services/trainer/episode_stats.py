"""What a rollout worker records about an episode besides its tokens and reward, for the
trainer's instruments: truncation, per-round lengths and zoom counts, box sizes.

The worker adds ``episode_stats(outcome, image_size)`` to its ``RolloutResult``; the run
loop turns a step's results into metrics (``magsrl.trainer.step_metrics``)."""

from __future__ import annotations

from typing import Any


def episode_stats(outcome: Any, image_size: tuple[int, int]) -> dict[str, Any]:
    """``truncated``, ``round_tokens``, ``round_zooms``, ``box_areas`` and
    ``zooms_over_limit`` of a ``LoopOutcome`` on an image of ``image_size`` original pixels."""
    completions = [r.completions[0] for r in outcome.results]
    area = max(1, image_size[0] * image_size[1])
    usable = [[z for z in r.zooms if z.error is None and z.box is not None] for r in outcome.rounds]
    return {
        "truncated": any(c.finish_reason == "length" for c in completions),
        "round_tokens": [len(c.token_ids) for c in completions],
        "round_zooms": [len(zooms) for zooms in usable],
        "box_areas": [
            (z.box[2] - z.box[0]) * (z.box[3] - z.box[1]) / area for zooms in usable for z in zooms
        ],
        "zooms_over_limit": sum(getattr(outcome, "zooms_over_limit", ())),
    }
