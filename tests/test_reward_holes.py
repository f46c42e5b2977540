"""Each reward hole of issue 14, before and after: the numbers in docs/trainer.md's table.

"Before" is computed by ``legacy_*``, the old formulas kept here as references (a fraction
of invalid requests, the max IoU, accuracy from any reply, no tool term); "after" by
``compute_reward`` with the default weights (accuracy 1, format 0.1, zoom_validity 0.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from magsrl.data.sample import Sample
from magsrl.proto.policy import Round, Zoom
from magsrl.proto.rollout import RewardOptions
from magsrl.trainer.grpo import composed_advantages, group_advantages
from magsrl.trainer.rewards import box_iou, compute_reward
from magsrl.trainer.run_config import RewardWeights

IMAGE = (1000, 1000)
ZOOM_ROUND = "<think>Too small to read. <zoom>[[10, 10, 60, 60]]</zoom></think>"
ANSWER_ROUND = "<rethink>Now it is clear.</rethink><answer>red</answer>"
DIRECT = "<think>It is clearly red.</think><answer>red</answer>"


def sample(**fields: Any) -> Sample:
    base: dict[str, Any] = {"id": "s1", "image": "/img.png", "question": "q?", "answer": "red"}
    return Sample(**(base | fields))


def zoom_rounds(*boxes: list[int] | None) -> list[Round]:
    zooms = [Zoom(box=b, error=None if b else "malformed") for b in boxes]
    return [Round(text=ZOOM_ROUND, zooms=zooms), Round(text=ANSWER_ROUND)]


def reward(rounds: list[Round], texts: list[str], **kwargs: Any) -> Any:
    weights = kwargs.pop("weights", RewardWeights().weights())
    return compute_reward(
        kwargs.pop("sample", sample()),
        rounds,
        kwargs.pop("answer", "red"),
        texts,
        weights,
        protocol="tags",
        image_size=IMAGE,
        **kwargs,
    )


def legacy_validity(rounds: Sequence[Round]) -> float:
    zooms = [z for r in rounds for z in r.zooms]
    return sum(z.error is not None or z.box is None for z in zooms) / len(zooms) if zooms else 0.0


def legacy_iou(rounds: Sequence[Round], bbox: Sequence[float]) -> float:
    boxes = [z.box for r in rounds for z in r.zooms if z.error is None and z.box is not None]
    return max((box_iou(b, bbox) for b in boxes), default=0.0)


def test_hole_format_no_longer_acts_like_accuracy() -> None:
    """Hole 1: an all-correct group where one episode's round is malformed. Before: format
    rewards [1.1, 1.1, 1.1, 1.0] gave advantages [0.5, 0.5, 0.5, -1.5], a right/wrong split.
    After: totals [1, 1, 1, 0.9] and advantages at the format's own scale."""
    good = reward([Round(text=DIRECT)], [DIRECT])
    sloppy_text = "It is red. <answer>red</answer> done"
    sloppy = reward([Round(text=sloppy_text)], [sloppy_text])
    assert good.total == 1.0 and sloppy.correct and sloppy.total == pytest.approx(0.9)
    totals = torch.tensor([good.total] * 3 + [sloppy.total])
    primary = torch.tensor([good.primary] * 3 + [sloppy.primary])
    before = group_advantages(torch.tensor([1.1, 1.1, 1.1, 1.0]), 4)
    after = composed_advantages(totals, primary, 4)
    torch.testing.assert_close(before, torch.tensor([0.5, 0.5, 0.5, -1.5]), atol=1e-2, rtol=0)
    torch.testing.assert_close(after, torch.tensor([0.025, 0.025, 0.025, -0.075]))
    # And a wrong answer in the same group still sits far below every right one.
    wrong = reward([Round(text=DIRECT)], [DIRECT], answer="blue")
    mixed = composed_advantages(
        torch.tensor([good.total, sloppy.total, wrong.total, wrong.total]),
        torch.tensor([good.primary, sloppy.primary, wrong.primary, wrong.primary]),
        4,
    )
    assert min(mixed[:2]) > 0.7 and max(mixed[2:]) < -0.8


def test_hole_zoom_validity_counts_bad_boxes() -> None:
    """Hole 2: one invalid box plus three whole-image boxes cost 0.25 (a fraction); now four
    bad boxes are the full penalty (1.0, -0.1 with the default weight)."""
    whole = [0, 0, 1000, 1000]
    rounds = zoom_rounds(None, whole, whole, whole)
    assert legacy_validity(rounds) == 0.25
    result = reward(rounds, [ZOOM_ROUND, ANSWER_ROUND])
    assert result.components["zoom_validity"] == 1.0
    assert result.total == pytest.approx(1.0 - 0.1)
    # A single near-whole-image box is degenerate; a box half the image is not.
    degenerate = reward(zoom_rounds([0, 0, 960, 960]), [ZOOM_ROUND, ANSWER_ROUND])
    half = reward(zoom_rounds([0, 0, 500, 1000]), [ZOOM_ROUND, ANSWER_ROUND])
    assert degenerate.components["zoom_validity"] == 0.25
    assert half.components["zoom_validity"] == 0.0


def test_hole_boxes_over_the_limit_are_a_format_error() -> None:
    """Hole 3: six boxes with a per-round limit of 4 lost two silently (no penalty). Now the
    round fails the format check and the two dropped requests count as bad boxes."""
    box = [100, 100, 300, 300]
    rounds = zoom_rounds(*[box] * 4)  # what the loop zoomed
    before = reward(rounds, [ZOOM_ROUND, ANSWER_ROUND])
    after = reward(rounds, [ZOOM_ROUND, ANSWER_ROUND], zooms_over_limit=[2, 0])
    assert before.total == 1.0
    assert after.components["format"] == 0.5
    assert after.components["zoom_validity"] == 0.5
    assert after.total == pytest.approx(1.0 - 0.1 * 0.5 - 0.1 * 0.5)


def test_hole_iou_scores_the_boxes_as_a_set() -> None:
    """Hole 4: with the max over boxes, one whole-image box scored 0.002 and four sprayed
    boxes 0.44; as the mean best match the spray scores 0.11 and one tight box 0.44."""
    target = [400, 400, 444, 444]
    whole = zoom_rounds([0, 0, 1000, 1000])
    hit = [400, 400, 466, 466]
    spray = zoom_rounds(hit, [0, 0, 200, 200], [600, 0, 800, 200], [0, 600, 200, 800])
    assert legacy_iou(whole, target) == pytest.approx(0.0019, abs=1e-4)
    assert legacy_iou(spray, target) == pytest.approx(0.444, abs=1e-3)
    weights = RewardWeights(zoom_iou=0.5).weights()
    texts = [ZOOM_ROUND, ANSWER_ROUND]
    tight = reward(zoom_rounds(hit), texts, sample=sample(bbox=target), weights=weights)
    sprayed = reward(spray, texts, sample=sample(bbox=target), weights=weights)
    assert tight.components["zoom_iou"] == pytest.approx(0.444, abs=1e-3)
    assert sprayed.components["zoom_iou"] == pytest.approx(0.111, abs=1e-3)
    assert tight.total > sprayed.total


def test_hole_answer_must_be_in_the_slot() -> None:
    """Hole 5a: a reply with the right word outside <answer> scored full accuracy. Now it
    scores 0, unless the dataset allows free text."""
    text = "<think>It is red.</think> red"
    required = reward([Round(text=text)], [text])
    free = reward([Round(text=text)], [text], options=RewardOptions(answer_slot="free_text"))
    assert required.components["accuracy"] == 0.0 and not required.correct
    assert free.components["accuracy"] == 1.0


def test_hole_a_zoom_that_led_to_a_right_answer_pays() -> None:
    """Hole 5b: skipping the zoom was never worse. With DeepEyes' conditional tool reward, a
    right answer after a zoom earns the bonus; a wrong one after a zoom earns nothing."""
    weights = RewardWeights(tool_bonus=0.1).weights()
    zoomed = reward(zoom_rounds([100, 100, 300, 300]), [ZOOM_ROUND, ANSWER_ROUND], weights=weights)
    direct = reward([Round(text=DIRECT)], [DIRECT], weights=weights)
    wrong = reward(
        zoom_rounds([100, 100, 300, 300]),
        [ZOOM_ROUND, ANSWER_ROUND],
        weights=weights,
        answer="blue",
    )
    assert zoomed.total == pytest.approx(1.1) and direct.total == 1.0
    assert wrong.total == 0.0


def test_penalties_cannot_outweigh_accuracy() -> None:
    """The composition's guarantee: penalty weights summing to accuracy's are refused, since a
    right answer could then score no more than a wrong one."""
    with pytest.raises(ValueError, match="not below"):
        RewardWeights(format=0.5, zoom_validity=0.5, overlong=0.0)
    weights = RewardWeights(format=0.3, zoom_validity=0.3, overlong=0.3)
    worst_right = reward(
        zoom_rounds(*[None] * 4),
        ["junk", "junk <answer>red</answer>"],
        weights=weights.weights(),
        truncated=True,
    )
    best_wrong = reward([Round(text=DIRECT)], [DIRECT], answer="blue", weights=weights.weights())
    assert worst_right.correct and worst_right.total > best_wrong.total
