"""Reward components and their weighted total: each component on real-looking model outputs,
exact IoU values, the penalty's sign, and refusals of weights the trainer cannot mean."""

from __future__ import annotations

import json
from typing import Any

import pytest

from magsrl.data.sample import Sample
from magsrl.proto.policy import Round, Zoom
from magsrl.trainer.rewards import (
    COMPONENTS,
    accuracy_reward,
    box_iou,
    compute_reward,
    format_reward,
    round_format_issues,
    token_fraction_reward,
    zoom_iou_reward,
    zoom_validity_penalty,
)
from magsrl.trainer.run_config import RewardWeights


def sample(**fields: Any) -> Sample:
    base: dict[str, Any] = {"id": "s1", "image": "/img.png", "question": "q?", "answer": "red"}
    return Sample(**(base | fields))


def tool_call(box: list[float]) -> str:
    call = {"name": "zoom", "arguments": {"bbox_2d": box, "label": "sign"}}
    return f"<tool_call>{json.dumps(call)}</tool_call>"


ZOOM_ROUND = "<think>The sign is tiny. <zoom>[[10, 10, 60, 60]]</zoom></think>"
ANSWER_ROUND = "<rethink>The magnified sign is red.</rethink><answer>red</answer>"
DIRECT = "<think>It is clearly red.</think><answer>red</answer>"
TOOL_ROUND = "<think>The sign is tiny.</think>\n" + tool_call([10, 10, 60, 60])
MC = {"options": ["red", "blue", "green"], "scorer": "mc"}


# ---- accuracy ------------------------------------------------------------------------

ACCURACY = [
    pytest.param({}, "<answer>Red.</answer>", 1.0, id="text-case-and-punctuation"),
    pytest.param({}, "The answer is red", 1.0, id="text-lead-in"),
    pytest.param({}, "<answer>blue</answer>", 0.0, id="text-wrong"),
    pytest.param({}, "", 0.0, id="text-empty-answer"),
    pytest.param({**MC, "answer": "B"}, "B", 1.0, id="mc-letter"),
    pytest.param({**MC, "answer": "B"}, "The answer is (B).", 1.0, id="mc-letter-in-sentence"),
    pytest.param({**MC, "answer": "B"}, "blue", 1.0, id="mc-option-text"),
    pytest.param({**MC, "answer": "blue"}, "<answer>B</answer>", 1.0, id="mc-gold-as-text"),
    pytest.param({**MC, "answer": "B"}, "A", 0.0, id="mc-wrong-letter"),
    pytest.param({"answer": "3", "scorer": "count"}, "three", 1.0, id="count-word"),
    pytest.param({"answer": "3", "scorer": "count"}, "<answer>3 people</answer>", 1.0, id="count"),
    pytest.param({"answer": "3", "scorer": "count"}, "4", 0.0, id="count-wrong"),
    pytest.param({"answer": "3", "scorer": "count"}, "2 or 3", 0.0, id="count-ambiguous"),
    pytest.param({"answer": "0", "scorer": "count"}, "There are none.", 1.0, id="count-zero"),
    pytest.param({"answer": "yes", "scorer": "yesno"}, "Yes, it is.", 1.0, id="yesno-yes"),
    pytest.param({"answer": "true", "scorer": "yesno"}, "False.", 0.0, id="yesno-wrong"),
]


@pytest.mark.parametrize(("fields", "reply", "expected"), ACCURACY)
def test_accuracy_uses_the_dataset_scorer(
    fields: dict[str, Any], reply: str, expected: float
) -> None:
    """Pins accuracy compared by raw string equality (or the wrong scorer), which scores
    "(B)", "three" and "3 people" as wrong and teaches the policy nothing."""
    assert accuracy_reward(sample(**fields), reply) == expected


def test_unreadable_gold_is_a_data_error() -> None:
    """Pins a gold answer the scorer cannot read silently becoming reward 0 for every rollout."""
    with pytest.raises(ValueError, match="not a count"):
        accuracy_reward(sample(answer="many", scorer="count"), "3")


# ---- format --------------------------------------------------------------------------

FORMAT = [
    pytest.param([ZOOM_ROUND, ANSWER_ROUND], "tags", "auto", 1.0, id="tags-zoom-then-answer"),
    pytest.param([DIRECT], "tags", "auto", 1.0, id="tags-direct-answer"),
    pytest.param(
        ["<think>tiny</think><zoom>[[1, 1, 50, 50]]</zoom>", ANSWER_ROUND],
        "tags",
        "auto",
        0.5,
        id="tags-zoom-outside-think",
    ),
    pytest.param(
        ["<think>x <zoom>[[1, 2, 3]]</zoom></think>", ANSWER_ROUND],
        "tags",
        "auto",
        0.5,
        id="tags-unreadable-box",
    ),
    pytest.param([ZOOM_ROUND, ZOOM_ROUND], "tags", "auto", 0.5, id="last-round-never-answers"),
    pytest.param(
        [ZOOM_ROUND, "<rethink>r</rethink><answer></answer>"], "tags", "auto", 0.5, id="empty"
    ),
    pytest.param([DIRECT + " Hope that helps!"], "tags", "auto", 0.0, id="text-after-answer"),
    pytest.param(["red"], "tags", "auto", 0.0, id="no-tags-at-all"),
    pytest.param([TOOL_ROUND, ANSWER_ROUND], "tags", "auto", 0.5, id="tool-call-in-tags-run"),
    pytest.param([], "tags", "auto", 0.0, id="no-rounds"),
    pytest.param([TOOL_ROUND, ANSWER_ROUND], "tools", "auto", 1.0, id="tools-call-then-answer"),
    pytest.param([DIRECT], "tools", "auto", 1.0, id="tools-direct-answer"),
    pytest.param([ZOOM_ROUND, ANSWER_ROUND], "tools", "auto", 0.5, id="zoom-tag-in-tools-run"),
    pytest.param(
        ["<think>t</think><tool_call>{not json</tool_call>", ANSWER_ROUND],
        "tools",
        "auto",
        0.5,
        id="tools-malformed-json",
    ),
    pytest.param(
        ["<think>t " + tool_call([1, 1, 9, 9]) + "</think>", ANSWER_ROUND],
        "tools",
        "auto",
        0.5,
        id="tool-call-inside-think",
    ),
    pytest.param(
        ["<zoom>[[10, 10, 60, 60]]</zoom>", ANSWER_ROUND], "tags", "force", 1.0, id="forced-bare"
    ),
    pytest.param([tool_call([1, 1, 9, 9]), ANSWER_ROUND], "tools", "force", 1.0, id="forced-tool"),
    pytest.param([ZOOM_ROUND, ANSWER_ROUND], "tags", "force", 1.0, id="forced-with-think"),
    pytest.param(
        ["<zoom>[[10, 10, 60, 60]]</zoom>", ANSWER_ROUND], "tags", "auto", 0.5, id="bare-unforced"
    ),
    pytest.param([DIRECT], "tags", "force", 0.0, id="forced-but-never-zoomed"),
]


@pytest.mark.parametrize(("texts", "protocol", "zoom_mode", "expected"), FORMAT)
def test_format_reward(texts: list[str], protocol: str, zoom_mode: str, expected: float) -> None:
    """Pins the format reward: per-round credit for well-formed tags (or tool calls) in the
    run's own protocol, a final non-empty <answer>, and MGPO's bare grounding turn accepted
    (not penalised) under zoom=force."""
    assert format_reward(texts, protocol, zoom_mode) == expected  # type: ignore[arg-type]


def test_format_issues_say_what_is_wrong() -> None:
    """Pins a failing round with no reason (the rollout logs these issues for debugging)."""
    issues = round_format_issues(TOOL_ROUND, "tags", final=True)
    assert any("other protocol" in i for i in issues)
    assert any("no final <answer>" in i for i in issues)
    assert round_format_issues(DIRECT, "tags", final=True) == []


# ---- zoom validity and IoU -----------------------------------------------------------


def zooms(*boxes: list[int] | None, errors: tuple[int, ...] = ()) -> list[Round]:
    return [
        Round(
            text=ZOOM_ROUND,
            zooms=[
                Zoom(box=box, error="bad box" if i in errors else None)
                for i, box in enumerate(boxes)
            ],
        ),
        Round(text=ANSWER_ROUND),
    ]


VALIDITY = [
    pytest.param([], 0.0, id="no-zooms"),
    pytest.param(zooms([0, 0, 50, 50]), 0.0, id="one-valid"),
    pytest.param(zooms([0, 0, 50, 50], None, errors=(1,)), 0.25, id="one-of-two-malformed"),
    pytest.param(zooms([0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 9, 9], None, errors=(3,)), 0.25, id="q"),
    pytest.param(zooms(None), 0.25, id="box-none-without-error"),
    pytest.param(zooms([0, 0, 5, 5], errors=(0,)), 0.25, id="error-with-box"),
    pytest.param(zooms(*[None] * 6, errors=(0, 1, 2, 3, 4, 5)), 1.0, id="capped-at-1"),
]


@pytest.mark.parametrize(("rounds", "expected"), VALIDITY)
def test_zoom_validity_counts_unusable_requests(rounds: list[Round], expected: float) -> None:
    """Pins the penalty counting only errors (not box-less requests), being a fraction that
    valid boxes dilute, or growing past 1 (the default cap is 4 bad boxes)."""
    assert zoom_validity_penalty(rounds) == expected


IOU = [
    pytest.param([0, 0, 10, 10], [0, 0, 10, 10], 1.0, id="identical"),
    pytest.param([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175, id="quarter-overlap"),
    pytest.param([0, 0, 10, 10], [0, 0, 20, 20], 0.25, id="contained"),
    pytest.param([0, 0, 10, 10], [10, 0, 20, 10], 0.0, id="touching"),
    pytest.param([0, 0, 10, 10], [30, 30, 40, 40], 0.0, id="disjoint"),
    pytest.param([0, 0, 10, 20], [0, 10, 10, 30], 1 / 3, id="half-each"),
]


@pytest.mark.parametrize(("a", "b", "expected"), IOU)
def test_box_iou_exact(a: list[float], b: list[float], expected: float) -> None:
    """Pins IoU computed with an off-by-one pixel convention or as intersection/area(a)."""
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


def test_zoom_iou_is_the_mean_best_match_of_the_requests() -> None:
    """Pins zoom_iou taking the max (spraying boxes pays), counting an errored request's box,
    or crashing on a sample without a bbox."""
    rounds = zooms([0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 15, 15], errors=(1,))
    # (0.25 + 0 for the errored one + 0.25) / 3, not the errored 1.0
    assert zoom_iou_reward(rounds, [0, 0, 20, 20]) == pytest.approx(1 / 6)
    assert zoom_iou_reward(rounds, None) == 0.0
    assert zoom_iou_reward([Round(text=DIRECT)], [0, 0, 20, 20]) == 0.0


# ---- token fraction ------------------------------------------------------------------

TOKENS = [
    pytest.param([["a", "b"], ["a", "a"]], "a", 0.75, id="across-rounds"),
    pytest.param([["Ġa", "a"]], "a", 0.5, id="exact-match-only"),
    pytest.param([[], []], "a", 0.0, id="no-tokens"),
    pytest.param([["x"] * 10], "x", 1.0, id="all"),
]


@pytest.mark.parametrize(("tokens", "target", "expected"), TOKENS)
def test_token_fraction(tokens: list[list[str]], target: str, expected: float) -> None:
    """Pins the debugging reward the end-to-end training test learns: a fraction over all
    rounds' tokens, by exact token equality."""
    assert token_fraction_reward(tokens, target) == expected


# ---- the total -----------------------------------------------------------------------


def test_total_is_the_documented_composition() -> None:
    """Pins the zoom-validity penalty added (rewarding broken boxes) or a weight applied to the
    wrong component: every term of the documented composition checked."""
    rounds = zooms([0, 0, 10, 10], None, errors=(1,))
    weights = {"accuracy": 1.0, "format": 0.2, "zoom_validity": 0.4, "zoom_iou": 0.5}
    result = compute_reward(
        sample(bbox=[5, 5, 15, 15]),
        rounds,
        "red",
        [ZOOM_ROUND, ANSWER_ROUND],
        weights,
        protocol="tags",
    )
    assert result.correct
    assert result.components == {
        "accuracy": 1.0,
        "format": 1.0,
        "zoom_validity": 0.25,
        "zoom_iou": pytest.approx(25 / 175 / 2),
        "tool_bonus": 1.0,
        "overlong": 0.0,
    }
    assert result.total == pytest.approx(1.0 - 0.2 * 0 - 0.4 * 0.25 + 0.5 * 25 / 175 / 2)
    assert result.primary == 1.0


def test_a_wrong_answer_with_broken_zooms_goes_negative() -> None:
    """Pins the penalty clamped away (or its sign lost) when nothing else rewards the episode."""
    rounds = zooms(None, errors=(0,))
    result = compute_reward(
        sample(), rounds, "blue", ["oops", "blue"], RewardWeights().weights(), protocol="tags"
    )
    assert not result.correct
    assert result.components["format"] == 0.0
    assert result.total == pytest.approx(-0.1 - 0.1 * 0.25)


def test_token_fraction_in_the_total() -> None:
    """Pins target_token being ignored, or token_fraction missing from the logged components."""
    result = compute_reward(
        sample(),
        [Round(text=DIRECT)],
        "blue",
        [DIRECT],
        {"token_fraction": 2.0},
        protocol="tags",
        target_token="a",
        completion_tokens=[["a", "b", "a", "a"]],
    )
    assert result.components["token_fraction"] == 0.75
    assert result.total == pytest.approx(1.5)


def test_missing_weights_are_zero() -> None:
    """Pins an absent weight defaulting to something other than 0 (e.g. the config's 1.0):
    a right, well-formed answer with only a format weight scores 0."""
    result = compute_reward(sample(), [], "red", [DIRECT], {"format": 1.0}, protocol="tags")
    assert result.total == 0.0 and result.components["accuracy"] == 1.0


BAD_WEIGHTS = [
    pytest.param({"acuracy": 1.0}, {}, "unknown reward component", id="typo"),
    pytest.param({"accuracy": 1.0, "length": 0.1}, {}, "known components: accuracy", id="unknown"),
    pytest.param({"zoom_validity": -0.1}, {}, "must be finite and >= 0", id="negative-penalty"),
    pytest.param({"accuracy": float("nan")}, {}, "finite", id="nan"),
    pytest.param({"token_fraction": 1.0}, {}, "target_token is unset", id="token-no-target"),
    pytest.param({"accuracy": 1.0}, {"target_token": "a"}, "completion_tokens", id="no-tokens"),
]


@pytest.mark.parametrize(("weights", "kwargs", "message"), BAD_WEIGHTS)
def test_bad_weights_are_refused(
    weights: dict[str, float], kwargs: dict[str, Any], message: str
) -> None:
    """Pins a misspelt component silently weighing 0, a negative weight flipping a penalty
    into a reward, and token_fraction computed from nothing."""
    with pytest.raises(ValueError, match=message):
        compute_reward(sample(), [], "red", [DIRECT], weights, protocol="tags", **kwargs)


def test_the_unknown_component_message_lists_all_known_ones() -> None:
    """Pins a refusal that does not say which names would have worked."""
    with pytest.raises(ValueError) as info:
        compute_reward(sample(), [], "red", [DIRECT], {"bogus": 1.0}, protocol="tags")
    assert all(name in str(info.value) for name in COMPONENTS)


def test_config_weights_are_all_known_components() -> None:
    """Pins RewardWeights and the reward code drifting apart: a config field the rewards do
    not know would make every rollout fail."""
    weights = RewardWeights(token_fraction=1.0, target_token="a").weights()
    assert set(weights) == set(COMPONENTS)
    compute_reward(
        sample(),
        [],
        "red",
        [DIRECT],
        weights,
        protocol="tags",
        target_token="a",
        completion_tokens=[["a"]],
    )
