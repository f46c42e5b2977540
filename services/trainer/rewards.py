"""Reward components of an episode, as small pure functions, and ``compute_reward``, which
composes them into the scalar GRPO compares within a group. The rollout worker calls it on
the zoom loop's outcome.

The composition (docs/trainer.md, "Rewards"): **accuracy drives the advantage; shaping terms
are penalties, or bonuses paid only when the answer is right.**

    total = w_acc * accuracy + w_tok * token_fraction                  (primary)
          - w_fmt * (1 - format) - w_zv * zoom_validity - w_ol * overlong   (penalties)
          + [correct] * (w_iou * zoom_iou + w_tool * tool_bonus)       (bonuses)

With penalty weights summing below ``w_acc`` (``RewardWeights`` checks it), every right
answer outscores every wrong one in a group, and bonuses cannot make a wrong answer pay.
The trainer divides advantages by the group std of the primary part only
(``grpo.composed_advantages``), so shaping moves advantages at its own scale.

Each component is unweighted and in [0, 1]:

- ``accuracy``: 1 when the dataset's scorer (``magsrl.data.scorers.score``) accepts the final
  answer and that answer sat in the protocol's answer slot (``<answer>`` in both protocols);
  ``RewardOptions.answer_slot="free_text"`` scores any reply (free-text datasets).
- ``format``: the fraction of rounds that pass a per-round check. A round passes when
  ``parse_turn`` finds it well formed, every zoom request uses the run's protocol, it asked
  for no more boxes than the loop's per-round limit (the loop drops the rest), and, for the
  last round, it holds a non-empty ``<answer>``. Under ``zoom="force"`` the first round is
  MGPO's grounding turn: it passes with a bare request and fails without one.
- ``zoom_validity``: bad boxes *counted*, ``min(bad, bad_box_cap) / bad_box_cap``: requests
  the loop could not use (error or no box), degenerate ones (covering at least
  ``degenerate_box_area`` of the image), and requests over the per-round limit. A count, so
  adding valid boxes never dilutes it.
- ``zoom_iou``: the boxes as a set: the mean over every requested box of its best IoU with
  the dataset's boxes (unusable requests count 0), so spraying boxes does not pay.
- ``tool_bonus``: 1 when the episode made at least one usable zoom (DeepEyes' conditional
  tool reward, paid only with a right answer).
- ``overlong``: 1 when a round was cut by ``max_tokens`` (weighted only under
  ``grpo.overlong: penalty``).
- ``token_fraction``: the fraction of completion tokens equal to ``target_token``: a
  debugging reward a tiny model learns on CPU in a few dozen steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from magsrl.data.sample import Sample
from magsrl.data.scorers import score
from magsrl.proto.policy import Round
from magsrl.proto.rollout import RewardOptions
from magsrl.proto.vocab import Protocol, ZoomMode
from magsrl.zoom.parsing import ParsedTurn, parse_turn
from magsrl.zoom.protocols import get_protocol

__all__ = [
    "COMPONENTS",
    "PENALTIES",
    "Protocol",
    "RewardBreakdown",
    "RewardOptions",
    "accuracy_reward",
    "box_iou",
    "compute_reward",
    "format_reward",
    "primary_reward",
    "round_format_issues",
    "token_fraction_reward",
    "zoom_iou_reward",
    "zoom_validity_penalty",
]


COMPONENTS: tuple[str, ...] = (
    "accuracy",
    "format",
    "zoom_validity",
    "zoom_iou",
    "token_fraction",
    "tool_bonus",
    "overlong",
)
# The primary reward: what the answer is worth. The group std of advantages comes from it.
PRIMARY: tuple[str, ...] = ("accuracy", "token_fraction")
# Penalties (weights >= 0, subtracted): format counts its failing share, the others as is.
PENALTIES: frozenset[str] = frozenset({"format", "zoom_validity", "overlong"})
# Bonuses paid only when the answer is right, so a wrong answer never earns by zooming.
IF_CORRECT: frozenset[str] = frozenset({"zoom_iou", "tool_bonus"})

# The zoom-request form each protocol asks the model for (ZoomCall.source).
_PROTOCOL_SOURCE: dict[str, str] = {
    "tags": "tag",
    "tools": "tool_call",
    "magsrl_tags": "tag",
    "magsrl_tools": "tool_call",
}
# parse_turn issues a forced grounding turn may have: the force_grounding prompt asks for
# "nothing but that region as a box", so no reasoning block and a bare <zoom> are compliant.
_FORCED_TURN_TOLERATED = ("<zoom> outside <think>", "no <think> or <rethink> reasoning")


@dataclass(frozen=True)
class RewardBreakdown:
    """The weighted total, each component unweighted, and whether the answer was right."""

    total: float
    components: dict[str, float] = field(default_factory=dict)
    correct: bool = False
    primary: float = 0.0  # the primary part of total (accuracy, token_fraction)


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
    episode's last round, which must answer; ``forced``: MGPO's grounding turn. A peer's
    protocol (DeepEyes, Mini-o3, MGPO) is checked by its registry entry's own rule."""
    if protocol not in _PROTOCOL_SOURCE and protocol != "auto":
        entry = get_protocol(protocol)
        return entry.format_issues(text, final) if entry.format_issues else []
    turn = parsed if parsed is not None else parse_turn(text)
    issues = list(turn.format_issues)
    if forced:
        issues = [i for i in issues if i not in _FORCED_TURN_TOLERATED]
        if not turn.zooms:
            issues.append("the grounding turn (zoom=force) has no zoom request")
    wanted = _PROTOCOL_SOURCE.get(protocol, "tag")
    if any(z.source != wanted for z in turn.zooms):
        form = "<zoom> tags" if wanted == "tag" else "<tool_call> zoom calls"
        issues.append(f"zoom requested in the other protocol's form: this run uses {form}")
    if final and not turn.answer:  # None (no block) or "" (empty block) alike
        issues.append("the last round has no final <answer>")
    return issues


def format_reward(
    completion_texts: Sequence[str],
    protocol: Protocol,
    zoom_mode: ZoomMode = "auto",
    zooms_over_limit: Sequence[int] = (),
) -> float:
    """The fraction of rounds that pass ``round_format_issues`` and asked for no more boxes
    than the loop's limit (``zooms_over_limit[k]`` > 0: round k asked for too many, and the
    loop dropped the rest); 0 with no rounds."""
    if not completion_texts:
        return 0.0
    last = len(completion_texts) - 1
    # A one-round episode under force skipped the grounding turn: it fails either way.
    forced = zoom_mode == "force"
    over = list(zooms_over_limit) + [0] * (len(completion_texts) - len(zooms_over_limit))
    passed = sum(
        not round_format_issues(text, protocol, final=i == last, forced=forced and i == 0)
        and over[i] == 0
        for i, text in enumerate(completion_texts)
    )
    return passed / len(completion_texts)


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def bad_boxes(
    rounds: Sequence[Round],
    image_size: tuple[int, int] | None,
    options: RewardOptions,
    zooms_over_limit: Sequence[int] = (),
) -> int:
    """How many requested boxes were bad: unusable (error or no box), degenerate (covering at
    least ``options.degenerate_box_area`` of the image; needs ``image_size``), or over the
    loop's per-round limit (never zoomed)."""
    image_area = image_size[0] * image_size[1] if image_size else 0
    bad = sum(zooms_over_limit)
    for zoom in (z for r in rounds for z in r.zooms):
        unusable = zoom.error is not None or zoom.box is None
        whole = bool(image_area) and _area(zoom.box or [0, 0, 0, 0]) >= (
            options.degenerate_box_area * image_area
        )
        bad += unusable or whole
    return bad


def zoom_validity_penalty(
    rounds: Sequence[Round],
    image_size: tuple[int, int] | None = None,
    options: RewardOptions | None = None,
    zooms_over_limit: Sequence[int] = (),
) -> float:
    """``min(bad boxes, cap) / cap`` (see ``bad_boxes``): a count, not a fraction, so valid
    boxes do not dilute bad ones; 0 with no bad box."""
    opts = options or RewardOptions()
    bad = bad_boxes(rounds, image_size, opts, zooms_over_limit)
    return min(bad, opts.bad_box_cap) / opts.bad_box_cap


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


def zoom_iou_reward(
    rounds: Sequence[Round],
    bbox: Sequence[float] | Sequence[Sequence[float]] | None,
    zooms_over_limit: Sequence[int] = (),
) -> float:
    """The requested boxes scored as a set: the mean, over every requested box, of its best
    IoU with the target box(es) (original pixels). Unusable and dropped requests count 0, so
    four sprayed boxes score a quarter of one good box. 0 without a target or a request."""
    if bbox is None or len(bbox) == 0:
        return 0.0
    targets: list[Sequence[float]] = (
        [bbox] if isinstance(bbox[0], (int, float)) else list(bbox)  # type: ignore[list-item]
    )
    zooms = [z for r in rounds for z in r.zooms]
    requested = len(zooms) + sum(zooms_over_limit)
    if not requested:
        return 0.0
    scores = [
        max(box_iou(z.box, t) for t in targets)
        for z in zooms
        if z.error is None and z.box is not None
    ]
    return sum(scores) / requested


def answer_in_slot(completion_texts: Sequence[str]) -> bool:
    """The last round holds a non-empty ``<answer>`` (the answer slot of both protocols)."""
    return bool(completion_texts) and bool(parse_turn(completion_texts[-1]).answer)


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


def primary_reward(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The primary part of a total: what the answer is worth (accuracy, token_fraction)."""
    return sum(weights.get(name, 0.0) * components.get(name, 0.0) for name in PRIMARY)


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
    options: RewardOptions | None = None,
    image_size: tuple[int, int] | None = None,
    zooms_over_limit: Sequence[int] = (),
    truncated: bool = False,
) -> RewardBreakdown:
    """The episode's reward: every computable component, unweighted, and their composition
    (module docstring).

    ``rounds`` are the zoom loop's rounds (their zooms, boxes in original pixels);
    ``completion_texts`` the model's text of each round; ``answer`` the final answer;
    ``completion_tokens`` the sampled tokens of each round as strings, needed for
    ``token_fraction`` (computed whenever ``target_token`` is set). ``zoom_mode`` is the job's
    zoom mode (``force`` changes what a well-formed first round is). ``image_size`` (original
    pixels) finds degenerate boxes; ``zooms_over_limit`` is the loop's per-round count of
    requests it dropped (``LoopOutcome.zooms_over_limit``); ``truncated``: a round was cut by
    ``max_tokens``. A weight missing from ``weights`` is 0; an unknown name, or a weight
    < 0, raises ValueError.
    """
    _check_weights(weights)
    opts = options or RewardOptions()
    in_slot = opts.answer_slot == "free_text" or answer_in_slot(completion_texts)
    correct = in_slot and accuracy_reward(sample, answer) == 1.0
    zoomed = any(z.error is None and z.box is not None for r in rounds for z in r.zooms)
    components: dict[str, float] = {
        "accuracy": float(correct),
        "format": format_reward(completion_texts, protocol, zoom_mode, zooms_over_limit),
        "zoom_validity": zoom_validity_penalty(rounds, image_size, opts, zooms_over_limit),
        "zoom_iou": zoom_iou_reward(rounds, sample.bbox, zooms_over_limit),
        "tool_bonus": float(zoomed),
        "overlong": float(truncated),
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
    primary = primary_reward(components, weights)
    total = primary
    for name, value in components.items():
        weight = weights.get(name, 0.0)
        if name == "format":
            total -= weight * (1.0 - value)  # the failing share of rounds
        elif name in PENALTIES:
            total -= weight * value
        elif name in IF_CORRECT and correct:
            total += weight * value
    return RewardBreakdown(total=total, components=components, correct=correct, primary=primary)
