"""Reward components of an episode, as small pure functions, and ``compute_reward``, which
weighs them into the scalar GRPO compares within a group. The rollout worker calls it on
the zoom loop's outcome.

Each component is unweighted and in [0, 1]:

- ``accuracy``: 1 when the dataset's scorer (``magsrl.data.scorers.score``) accepts the final
  answer, else 0.
- ``format``: the mean over the episode's rounds of a per-round 0/1 check. A round passes when
  ``parse_turn`` finds it well formed (think/rethink reasoning, ``<zoom>`` only inside
  ``<think>``, no stray text, an answer or a zoom request but not both...), every zoom request
  in it uses the run's protocol (``<zoom>`` tags for ``tags``, ``<tool_call>`` for ``tools``),
  and, for the last round, it holds a non-empty ``<answer>``. Under ``zoom="force"`` the first
  round is MGPO's grounding turn, which the prompt asks to be nothing but a zoom request: it
  passes with a bare request and fails without one.
- ``zoom_validity``: the fraction of zoom requests the loop could not use (``Zoom.error`` set
  or no box: malformed, empty after clamping, outside the image); 0 with no zooms. It is a
  penalty: ``compute_reward`` subtracts it. An unreadable request also fails ``format``;
  a readable but invalid box only costs here.
- ``zoom_iou``: the best IoU between a usable zoom box and ``sample.bbox``, both in original
  pixels; 0 with no usable zoom or no bbox.
- ``token_fraction``: the fraction of completion tokens exactly equal to ``target_token``
  (0 with no tokens). A debugging reward a tiny model learns on CPU in a few dozen steps.

``total = Σ w·c`` over the rewarding components ``- w_zoom_validity · zoom_validity``, the same
sum ``RewardWeights`` documents; every weight is >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from magsrl.data.sample import Sample
from magsrl.data.scorers import score
from magsrl.proto.policy import Round
from magsrl.proto.vocab import Protocol, ZoomMode
from magsrl.zoom.parsing import ParsedTurn, parse_turn

__all__ = [
    "COMPONENTS",
    "PENALTIES",
    "Protocol",
    "RewardBreakdown",
    "accuracy_reward",
    "box_iou",
    "compute_reward",
    "format_reward",
    "round_format_issues",
    "token_fraction_reward",
    "zoom_iou_reward",
    "zoom_validity_penalty",
]


COMPONENTS: tuple[str, ...] = ("accuracy", "format", "zoom_validity", "zoom_iou", "token_fraction")
# Components subtracted from the total rather than added (their weights are still >= 0).
PENALTIES: frozenset[str] = frozenset({"zoom_validity"})

# The zoom-request form each protocol asks the model for (ZoomCall.source).
_PROTOCOL_SOURCE: dict[str, str] = {"tags": "tag", "tools": "tool_call"}
# parse_turn issues a forced grounding turn may have: the force_grounding prompt asks for
# "nothing but that region as a box", so no reasoning block and a bare <zoom> are compliant.
_FORCED_TURN_TOLERATED = ("<zoom> outside <think>", "no <think> or <rethink> reasoning")


@dataclass(frozen=True)
class RewardBreakdown:
    """The weighted total, each component unweighted, and whether the answer was right."""

    total: float
    components: dict[str, float] = field(default_factory=dict)
    correct: bool = False


# ---- components ------------------------------------------------------------------------


def accuracy_reward(sample: Sample, answer: str) -> float:
    """1.0 when the sample's scorer accepts ``answer`` (a raw reply or the extracted answer).
    A gold answer the scorer cannot read raises ValueError: a data error, not a 0 reward."""
    return 1.0 if score(sample, answer) else 0.0


def round_format_issues(
    text: str,
    protocol: Protocol,
    *,
    final: bool,
    forced: bool = False,
    parsed: ParsedTurn | None = None,
) -> list[str]:
    """Why one round is not well formed for ``protocol``; empty when it is. ``final``: the
    episode's last round, which must answer; ``forced``: MGPO's grounding turn."""
    turn = parsed if parsed is not None else parse_turn(text)
    issues = list(turn.format_issues)
    if forced:
        issues = [i for i in issues if i not in _FORCED_TURN_TOLERATED]
        if not turn.zooms:
            issues.append("the grounding turn (zoom=force) has no zoom request")
    wanted = _PROTOCOL_SOURCE[protocol]
    if any(z.source != wanted for z in turn.zooms):
        form = "<zoom> tags" if protocol == "tags" else "<tool_call> zoom calls"
        issues.append(f"zoom requested in the other protocol's form: this run uses {form}")
    if final and not turn.answer:  # None (no block) or "" (empty block) alike
        issues.append("the last round has no final <answer>")
    return issues


def format_reward(
    completion_texts: Sequence[str], protocol: Protocol, zoom_mode: ZoomMode = "auto"
) -> float:
    """The fraction of rounds that pass ``round_format_issues``; 0 with no rounds."""
    if not completion_texts:
        return 0.0
    last = len(completion_texts) - 1
    # A one-round episode under force skipped the grounding turn: it fails either way.
    forced = zoom_mode == "force"
    passed = sum(
        not round_format_issues(text, protocol, final=i == last, forced=forced and i == 0)
        for i, text in enumerate(completion_texts)
    )
    return passed / len(completion_texts)


def zoom_validity_penalty(rounds: Sequence[Round]) -> float:
    """The fraction of zoom requests that were unusable (error or no box); 0 with none."""
    zooms = [zoom for r in rounds for zoom in r.zooms]
    if not zooms:
        return 0.0
    return sum(z.error is not None or z.box is None for z in zooms) / len(zooms)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes in the same frame (continuous
    coordinates: a box spans x2 - x1 by y2 - y1). 0 for disjoint or degenerate boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def zoom_iou_reward(rounds: Sequence[Round], bbox: Sequence[float] | None) -> float:
    """The best IoU of any usable zoom box (original pixels) with ``bbox``; 0 without either."""
    if bbox is None:
        return 0.0
    boxes = [z.box for r in rounds for z in r.zooms if z.error is None and z.box is not None]
    return max((box_iou(box, bbox) for box in boxes), default=0.0)


def token_fraction_reward(completion_tokens: Sequence[Sequence[str]], target_token: str) -> float:
    """The fraction of completion tokens (all rounds) exactly equal to ``target_token``."""
    tokens = [token for round_tokens in completion_tokens for token in round_tokens]
    if not tokens:
        return 0.0
    return sum(token == target_token for token in tokens) / len(tokens)


# ---- the total -------------------------------------------------------------------------


def _check_weights(weights: Mapping[str, float]) -> None:
    unknown = sorted(set(weights) - set(COMPONENTS))
    if unknown:
        raise ValueError(
            f"unknown reward component(s) {', '.join(map(repr, unknown))}; known components: "
            f"{', '.join(COMPONENTS)}"
        )
    for name, weight in weights.items():
        # A negative weight would silently flip a reward into a penalty (or the reverse).
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"reward weight {name}={weight} must be finite and >= 0 (zoom_validity is "
                "subtracted by its place in the sum, not by a negative weight)"
            )


def compute_reward(
    sample: Sample,
    rounds: list[Round],
    answer: str,
    completion_texts: list[str],
    weights: Mapping[str, float],
    *,
    protocol: Protocol,
    target_token: str | None = None,
    completion_tokens: list[list[str]] | None = None,
    zoom_mode: ZoomMode = "auto",
) -> RewardBreakdown:
    """The episode's reward: every computable component, unweighted, and their weighted sum.

    ``rounds`` are the zoom loop's rounds (their zooms, boxes in original pixels);
    ``completion_texts`` the model's text of each round; ``answer`` the final answer;
    ``completion_tokens`` the sampled tokens of each round as strings, needed for
    ``token_fraction`` (computed whenever ``target_token`` is set). ``zoom_mode`` is the job's
    zoom mode (``force`` changes what a well-formed first round is). A weight missing from
    ``weights`` is 0; an unknown name, or a weight < 0, raises ValueError.
    """
    _check_weights(weights)
    correct = accuracy_reward(sample, answer) == 1.0
    components: dict[str, float] = {
        "accuracy": float(correct),
        "format": format_reward(completion_texts, protocol, zoom_mode),
        "zoom_validity": zoom_validity_penalty(rounds),
        "zoom_iou": zoom_iou_reward(rounds, sample.bbox),
    }
    if target_token is not None:
        if completion_tokens is None:
            raise ValueError(
                "target_token is set but completion_tokens is not: pass the sampled tokens of "
                "each round (the tokenizer's strings) to compute token_fraction"
            )
        components["token_fraction"] = token_fraction_reward(completion_tokens, target_token)
    elif weights.get("token_fraction", 0.0) > 0:
        raise ValueError("the token_fraction reward is weighted but target_token is unset")
    total = 0.0
    for name, value in components.items():
        weight = weights.get(name, 0.0)
        total += -weight * value if name in PENALTIES else weight * value
    return RewardBreakdown(total=total, components=components, correct=correct)
