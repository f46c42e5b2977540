"""Reading model output (pure functions): zoom requests in tag and Hermes tool-call form,
the turn structure a format reward uses, answers, multiple choice, and streaming."""

from __future__ import annotations

import json
import random

import pytest

from magsrl.policy.streaming import ContentDelta, StreamingToolCallParser
from magsrl.zoom.choices import normalize_choice
from magsrl.zoom.parsing import (
    ParsedTurn,
    ZoomCall,
    extract_answer,
    parse_turn,
    parse_zoom_calls,
    strip_tags,
    to_openai_tool_calls,
    tool_call_id,
)


def tool_call(arguments: object, name: str = "zoom", pad: str = "\n") -> str:
    body = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>{pad}{body}{pad}</tool_call>"


# ---- zoom requests ---------------------------------------------------------------------

TAGS_ROUND_1 = (
    "<think>The question asks about the street sign, but its text is tiny. "
    "<zoom>[[412, 96, 530, 160]]</zoom> Then I can read it.</think>"
)
TOOLS_ROUND_1 = (
    "<think>I need the licence plate.</think>\n"
    + tool_call({"bbox_2d": [10, 20, 110, 80], "label": "plate", "img_idx": 0})
    + "\n"
    + tool_call({"bbox_2d": [0.5, 1.5, 30, 40.25], "img_idx": 1}, pad="")
)


@pytest.mark.parametrize(
    ("text", "boxes"),
    [
        pytest.param("<zoom>[[1, 2, 3, 4]]</zoom>", [(1, 2, 3, 4)], id="tag-one-box"),
        pytest.param(
            "<zoom>[[1,2,3,4],[5,6,7,8], [9, 10, 11, 12]]</zoom>",
            [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)],
            id="tag-several-boxes",
        ),
        pytest.param("<zoom>[1, 2, 3, 4]</zoom>", [(1, 2, 3, 4)], id="tag-no-outer-brackets"),
        pytest.param(
            "<zoom>\n  [[ 0.1 , 0.25,\n 0.5, 0.75 ]]\n</zoom>",
            [(0.1, 0.25, 0.5, 0.75)],
            id="tag-whitespace-and-floats",
        ),
        pytest.param("<zoom>((1, 2, 3, 4))</zoom>", [(1, 2, 3, 4)], id="tag-parentheses"),
        pytest.param("<zoom>[1 2 3 4]</zoom>", [(1, 2, 3, 4)], id="tag-space-separated"),
        pytest.param("<zoom>1, 2, 3, 4</zoom>", [(1, 2, 3, 4)], id="tag-no-brackets"),
        pytest.param(
            "<zoom>[[1, 2, 3, 4]] (the red car)</zoom>", [(1, 2, 3, 4)], id="tag-trailing-junk"
        ),
        pytest.param(
            "<zoom>[[1,2,3,4],[5,6,7,8]</zoom>",
            [(1, 2, 3, 4), (5, 6, 7, 8)],
            id="tag-unbalanced-brackets",
        ),
        pytest.param('<zoom>{"bbox_2d": [1, 2, 3, 4]}</zoom>', [(1, 2, 3, 4)], id="tag-json"),
        pytest.param("<ZOOM>[[1, 2, 3, 4]]</ZOOM>", [(1, 2, 3, 4)], id="tag-upper-case"),
        pytest.param("<zoom>[[-0, 2e1, 3.5e1, 40]]</zoom>", [(0, 20, 35, 40)], id="tag-exponent"),
        pytest.param(
            "Outside any think: <zoom>[[1, 2, 3, 4]]</zoom>", [(1, 2, 3, 4)], id="tag-outside-think"
        ),
        pytest.param(
            tool_call({"bbox_2d": [1, 2, 3, 4], "label": "cat", "img_idx": 0}),
            [(1, 2, 3, 4)],
            id="tool-call",
        ),
        pytest.param(
            tool_call(json.dumps({"bbox_2d": [1, 2, 3, 4]}), pad="  \n\n "),
            [(1, 2, 3, 4)],
            id="tool-call-arguments-as-string",
        ),
        pytest.param(
            '<tool_call>{"name": "zoom", "parameters": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>',
            [(1, 2, 3, 4)],
            id="tool-call-parameters-alias",
        ),
        pytest.param(
            '<tool_call>{"name": "zoom", "arguments": {"bbox_2d": [1, 2, 3, 4]}} }</tool_call>',
            [(1, 2, 3, 4)],
            id="tool-call-trailing-brace",
        ),
    ],
)
def test_usable_zoom_requests(text: str, boxes: list[tuple[float, ...]]) -> None:
    calls = parse_zoom_calls(text)
    assert [call.error for call in calls] == [None] * len(boxes)
    assert [call.box for call in calls] == [tuple(map(float, b)) for b in boxes]


def test_tag_and_tool_calls_keep_textual_order_and_spans() -> None:
    """Both forms in one text come back in order, each ``raw`` exactly the text at ``span``."""
    text = TAGS_ROUND_1 + "\n" + TOOLS_ROUND_1
    calls = parse_zoom_calls(text)
    assert [c.source for c in calls] == ["tag", "tool_call", "tool_call"]
    assert [c.span[0] for c in calls] == sorted(c.span[0] for c in calls)
    for call in calls:
        assert text[call.span[0] : call.span[1]] == call.raw
    assert calls[1].label == "plate"
    assert calls[2].img_idx == 1
    assert calls[2].box == (0.5, 1.5, 30.0, 40.25)


def test_boxes_of_one_tag_share_its_raw_text() -> None:
    calls = parse_zoom_calls("<think><zoom>[[1,2,3,4],[5,6,7,8]]</zoom></think>")
    assert calls[0].raw == calls[1].raw == "<zoom>[[1,2,3,4],[5,6,7,8]]</zoom>"
    assert all(c.img_idx == 0 and c.label is None for c in calls)


@pytest.mark.parametrize(
    ("text", "message", "box_read"),
    [
        pytest.param("<zoom>[[nan, 2, 3, 4]]</zoom>", "finite", False, id="tag-nan-text"),
        pytest.param("<zoom>[[NaN, 2, 3, 4]]</zoom>", "finite", False, id="tag-nan-json"),
        pytest.param("<zoom>[[1, 2, 3]]</zoom>", "4 numbers", False, id="tag-three-numbers"),
        pytest.param("<zoom>[[1, 2, 3, 4, 5]]</zoom>", "got 5", False, id="tag-five-numbers"),
        pytest.param("<zoom>[[x1, y1, x2, y2]]</zoom>", "numbers", False, id="tag-placeholder"),
        pytest.param('<zoom>[["1", 2, 3, 4]]</zoom>', "numbers", False, id="tag-string-number"),
        pytest.param("<zoom></zoom>", "no box", False, id="tag-empty"),
        pytest.param("<zoom>  the car </zoom>", "4 numbers", False, id="tag-words"),
        pytest.param("<zoom>[[30, 2, 10, 4]]</zoom>", "inverted", True, id="tag-inverted"),
        pytest.param("<zoom>[[1, 2, 3, 2]]</zoom>", "empty", True, id="tag-zero-height"),
        pytest.param("<think><zoom>[[1, 2, 3,", "not closed", False, id="tag-cut-off"),
        pytest.param("<tool_call>{bad json}</tool_call>", "not valid JSON", False, id="bad-json"),
        pytest.param("<tool_call></tool_call>", "empty", False, id="empty-tool-call"),
        pytest.param("<tool_call>[1, 2]</tool_call>", "JSON object", False, id="json-array"),
        pytest.param(
            tool_call({"bbox_2d": [1, 2, 3, 4]}, name="crop"),
            "unknown tool 'crop'",
            False,
            id="wrong-tool-name",
        ),
        pytest.param(
            '<tool_call>{"arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>',
            "unknown tool",
            False,
            id="no-tool-name",
        ),
        pytest.param(
            tool_call({"bbox_2d": [1, 2, 3, 4], "img_idx": -1}),
            "img_idx should be greater",
            True,
            id="img-idx-negative",
        ),
        pytest.param(
            tool_call({"bbox_2d": [1, 2, 3, 4], "img_idx": 1.5}),
            "img_idx should be a valid",
            True,
            id="img-idx-fraction",
        ),
        pytest.param(
            tool_call({"bbox_2d": [1, 2, 3, 4], "img_idx": True}),
            "not true or false",
            False,
            id="img-idx-bool",
        ),
        pytest.param(
            tool_call({"bbox_2d": [1, 2, 3]}),
            "bbox_2d should have at least 4 items",
            False,
            id="tool-three-numbers",
        ),
        pytest.param(
            tool_call({"bbox_2d": ["left", 2, 3, 4]}),
            "bbox_2d[0] should be a valid number",
            False,
            id="tool-string-coordinate",
        ),
        pytest.param(tool_call({}), "bbox_2d is required", False, id="tool-missing-bbox"),
        pytest.param(
            tool_call({"bbox_2d": [1, 2, 3, 4], "zoom": 2}),
            "zoom is not an argument",
            True,
            id="tool-extra-argument",
        ),
        pytest.param(
            tool_call({"bbox_2d": [9, 2, 3, 4]}),
            "inverted",
            True,
            id="tool-inverted",
        ),
        pytest.param(
            '<tool_call>{"name": "zoom", "arguments": "{bbox_2d: [1,2,3,4]}"}</tool_call>',
            "arguments are not valid JSON",
            False,
            id="tool-arguments-string-not-json",
        ),
        pytest.param(
            '<tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": [1, 2',
            "not closed",
            False,
            id="tool-call-cut-off",
        ),
    ],
)
def test_unusable_requests_carry_an_error_not_an_exception(
    text: str, message: str, box_read: bool
) -> None:
    """An unusable request is one ZoomCall whose error says why in plain words; ``box`` is
    kept only when four finite numbers were read (so a format reward can tell the two)."""
    (call,) = parse_zoom_calls(text)
    assert call.error is not None and message in call.error
    assert not call.usable
    assert (call.box is not None) is box_read


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("<zoom>" + "[" * 100_000 + "</zoom>", id="tag-deep-brackets"),
        pytest.param("<tool_call>" + '{"a":' * 100_000 + "</tool_call>", id="tool-deep-json"),
        pytest.param("<zoom>[[1" + "0" * 400 + ", 2, 3, 4]]</zoom>", id="tag-huge-integer"),
        pytest.param("<zoom>[[" + "9" * 5000 + ", 2, 3, 4]]</zoom>", id="tag-too-many-digits"),
        pytest.param(
            tool_call({"bbox_2d": [0, 0, 1, 1]}).replace("1]", "9" * 5000 + "]"),
            id="tool-too-many-digits",
        ),
    ],
)
def test_pathological_input_never_raises(text: str) -> None:
    (call,) = parse_zoom_calls(text)
    assert call.error is not None


def test_a_good_box_beside_a_bad_one_stays_usable() -> None:
    calls = parse_zoom_calls("<zoom>[[1, 2, 3, 4], [5, 6, 7]]</zoom>")
    assert [c.usable for c in calls] == [True, False]


def test_unclosed_open_ends_at_the_next_request() -> None:
    """A dangling <zoom> does not swallow the well-formed request after it."""
    text = "I will use <zoom> now. <zoom>[[1, 2, 3, 4]]</zoom>"
    bad, good = parse_zoom_calls(text)
    assert bad.error is not None and "not closed" in bad.error
    assert bad.raw == "<zoom> now. "
    assert good.box == (1.0, 2.0, 3.0, 4.0)


def test_zoom_text_inside_a_tool_call_is_not_a_tag_request() -> None:
    text = tool_call({"bbox_2d": [1, 2, 3, 4], "label": "<zoom>[[5,6,7,8]]</zoom>"})
    (call,) = parse_zoom_calls(text)
    assert call.source == "tool_call" and call.label == "<zoom>[[5,6,7,8]]</zoom>"


def test_no_requests_in_plain_text() -> None:
    assert parse_zoom_calls("<think>clear</think><answer>cat</answer>") == []


# ---- OpenAI tool calls -----------------------------------------------------------------


def test_openai_tool_calls_from_both_forms() -> None:
    """Tag zooms become zoom tool calls too; unusable calls are left out; ids repeat."""
    calls = parse_zoom_calls(TAGS_ROUND_1 + "<zoom>[[1, 2]]</zoom>" + TOOLS_ROUND_1)
    entries = to_openai_tool_calls(calls)
    assert len(entries) == 3
    assert entries == to_openai_tool_calls(calls)
    assert len({e["id"] for e in entries}) == 3
    assert all(str(e["id"]).startswith("call_") and len(str(e["id"])) == 13 for e in entries)
    assert entries[0]["type"] == "function"
    args = [json.loads(e["function"]["arguments"]) for e in entries]  # type: ignore[index]
    assert args[0] == {"bbox_2d": [412, 96, 530, 160], "img_idx": 0}
    assert args[1] == {"bbox_2d": [10, 20, 110, 80], "label": "plate", "img_idx": 0}
    assert args[2] == {"bbox_2d": [0.5, 1.5, 30, 40.25], "img_idx": 1}
    assert {e["function"]["name"] for e in entries} == {"zoom"}  # type: ignore[index]


def test_openai_ids_depend_on_seed_and_prefix() -> None:
    calls = parse_zoom_calls(TAGS_ROUND_1)
    (plain,) = to_openai_tool_calls(calls)
    (seeded,) = to_openai_tool_calls(calls, id_prefix="chatcmpl-tool-", seed="req-1")
    assert plain["id"] != seeded["id"]
    assert str(seeded["id"]).startswith("chatcmpl-tool-")


def test_ids_differ_even_when_every_call_is_numbered_zero() -> None:
    """A stream converting one event at a time must not give a tag's two boxes one id."""
    first, second = parse_zoom_calls("<zoom>[[1,2,3,4],[5,6,7,8]]</zoom>")
    assert tool_call_id(first, 0) != tool_call_id(second, 0)


def test_same_box_twice_gets_two_ids() -> None:
    calls = parse_zoom_calls("<zoom>[[1,2,3,4],[1,2,3,4]]</zoom>")
    first, second = to_openai_tool_calls(calls)
    assert first["id"] != second["id"]


# ---- turn structure --------------------------------------------------------------------

ROUND_2 = "<rethink>Magnified, the sign reads 'Elm St'.</rethink>\n<answer>Elm St</answer>"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(TAGS_ROUND_1, id="tags-round-1-zoom"),
        pytest.param(TOOLS_ROUND_1, id="tools-round-1-zoom"),
        pytest.param(ROUND_2, id="round-2-answer"),
        pytest.param("<think>The cat is large.</think>\n<answer>cat</answer>", id="direct-answer"),
        pytest.param("The cat is large.</think><answer>cat</answer>", id="implicit-think-open"),
        pytest.param("\n<think>x</think>\n\n<answer>  2 </answer>\n", id="surrounding-blanks"),
    ],
)
def test_well_formed_turns(text: str) -> None:
    turn = parse_turn(text)
    assert turn.format_issues == []
    assert turn.well_formed


@pytest.mark.parametrize(
    ("text", "issue"),
    [
        pytest.param("<think>a<answer>B</answer>", "<think> is not closed", id="unclosed-think"),
        pytest.param("<think>a</think><answer>B", "<answer> is not closed", id="unclosed-answer"),
        pytest.param("<think>a</think>B", "neither an <answer>", id="answer-without-tags"),
        pytest.param("<think>a</think>B", "text outside the tags: 'B'", id="stray-text"),
        pytest.param(
            "<think>a</think><answer>B</answer> because it is red.",
            "text after </answer>",
            id="text-after-answer",
        ),
        pytest.param(
            "<think>a</think><zoom>[[1,2,3,4]]</zoom>",
            "<zoom> outside <think>",
            id="zoom-outside-think",
        ),
        pytest.param(
            "<think>a " + tool_call({"bbox_2d": [1, 2, 3, 4]}) + "</think>",
            "<tool_call> inside <think>",
            id="tool-call-inside-think",
        ),
        pytest.param(
            "<think><zoom>[[1,2,3,4]]</zoom></think><answer>B</answer>",
            "both an <answer>",
            id="zoom-and-answer",
        ),
        pytest.param(
            "<think><zoom>[[x1, y1, x2, y2]]</zoom></think>",
            "unreadable zoom request",
            id="unreadable-zoom",
        ),
        pytest.param("<answer>B</answer>", "no <think> or <rethink>", id="no-reasoning"),
        pytest.param("<think>a</think><answer> </answer>", "empty <answer>", id="empty-answer"),
        pytest.param(
            "<answer>B</answer><think>a</think>", "out of order", id="answer-before-think"
        ),
        pytest.param(
            "<think>a</think><think>b</think><answer>B</answer>",
            "more than one <think>",
            id="two-thinks",
        ),
        pytest.param(
            "<think>a <answer>B</answer></think>", "<answer> inside <think>", id="nested-answer"
        ),
        pytest.param("<think>a</think></answer>", "</answer> without <answer>", id="stray-close"),
    ],
)
def test_format_issues(text: str, issue: str) -> None:
    turn = parse_turn(text)
    assert not turn.well_formed
    assert any(issue in found for found in turn.format_issues), turn.format_issues


def test_inverted_box_is_not_a_format_issue() -> None:
    """A readable but invalid box is the zoom-validity reward's business, not format's."""
    turn = parse_turn("<think>look <zoom>[[9, 9, 1, 1]]</zoom></think>")
    assert turn.well_formed
    assert turn.zooms[0].error is not None


def test_parse_turn_fields() -> None:
    turn = parse_turn(TAGS_ROUND_1 + "\n" + TOOLS_ROUND_1)
    assert isinstance(turn, ParsedTurn)
    assert turn.think == "I need the licence plate."  # the last <think>
    assert turn.rethink is None and turn.answer is None
    assert len(turn.zooms) == 3
    assert "<tool_call>" not in turn.content
    assert turn.content == TAGS_ROUND_1 + "\n<think>I need the licence plate.</think>"


def test_round_2_fields() -> None:
    turn = parse_turn(ROUND_2)
    assert turn.rethink == "Magnified, the sign reads 'Elm St'."
    assert turn.answer == "Elm St"
    assert turn.think is None and turn.zooms == []


def test_think_keeps_its_zoom_request() -> None:
    turn = parse_turn(TAGS_ROUND_1)
    assert turn.think is not None and "<zoom>[[412, 96, 530, 160]]</zoom>" in turn.think


def test_realistic_noisy_output() -> None:
    """A rambling first round with a cut-off second request still yields the good box."""
    text = (
        "Okay, let me look.\n<think>\nThe question: what brand is the mug?  The mug is at "
        "the far left, quite small.\nI'll zoom: <zoom> [[ 12,340 , 96, 410 ]] </zoom>\n"
        "and maybe the shelf <zoom>[[100, 20, 300"
    )
    turn = parse_turn(text)
    good, cut = turn.zooms
    assert good.box == (12.0, 340.0, 96.0, 410.0) and good.usable
    assert cut.error is not None and "not closed" in cut.error
    assert turn.think is not None and turn.think.startswith("The question")
    assert not turn.well_formed
    assert any("<think> is not closed" in i for i in turn.format_issues)
    assert any("Okay, let me look." in i for i in turn.format_issues)


# ---- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        pytest.param(ROUND_2, "Elm St", id="answer-tag"),
        pytest.param("<answer>a</answer> <answer> b </answer>", "b", id="last-answer-wins"),
        pytest.param("<think>x</think><answer>B", "B", id="answer-cut-by-stop-string"),
        pytest.param("<think>It is red.</think> Red.", "Red.", id="text-after-think"),
        pytest.param("<think>It is red.</think>", "It is red.", id="only-reasoning"),
        pytest.param("  three  ", "three", id="plain-text"),
        pytest.param(
            "<think>hmm</think>" + tool_call({"bbox_2d": [1, 2, 3, 4]}) + " Blue",
            "Blue",
            id="tool-call-removed",
        ),
        pytest.param("<ANSWER>Yes</ANSWER>", "Yes", id="upper-case-tags"),
    ],
)
def test_extract_answer(text: str, answer: str) -> None:
    assert extract_answer(text) == answer


def test_strip_tags_keeps_the_text_between_tags() -> None:
    assert strip_tags("<think>a</think> <answer>b</answer>") == "a b"
    assert strip_tags(" plain ") == "plain"


COLOURS = ["blue", "red", "dark red", "green"]


@pytest.mark.parametrize(
    ("reply", "options", "letter"),
    [
        pytest.param("B", COLOURS, "B", id="bare-letter"),
        pytest.param("(B)", COLOURS, "B", id="bracketed-letter"),
        pytest.param("B.", COLOURS, "B", id="letter-with-period"),
        pytest.param("b", COLOURS, "B", id="lower-case-letter"),
        pytest.param("The answer is (B).", COLOURS, "B", id="answer-is-bracketed"),
        pytest.param("answer: d", COLOURS, "D", id="answer-colon"),
        pytest.param("The answer is A because it is blue", COLOURS, "A", id="answer-is-capital"),
        pytest.param("<answer>b</answer>", COLOURS, "B", id="answer-tag"),
        pytest.param("<think>x</think><answer>(D) green</answer>", COLOURS, "D", id="label+text"),
        pytest.param("Option C: dark red", COLOURS, "C", id="option-label-and-text"),
        pytest.param("Option C: blue", COLOURS, None, id="label-contradicts-text"),
        pytest.param("red", COLOURS, "B", id="option-text"),
        pytest.param("Red.", COLOURS, "B", id="option-text-case-punctuation"),
        pytest.param("The colour is dark red.", COLOURS, "C", id="longest-option-wins"),
        pytest.param("blue or green", COLOURS, None, id="two-options-ambiguous"),
        pytest.param("I think it is B", COLOURS, "B", id="lone-capital-not-pronoun"),
        pytest.param("the answer is a cat", COLOURS, None, id="article-is-not-a-letter"),
        pytest.param("A dog.", COLOURS, None, id="leading-article"),
        pytest.param("E", COLOURS, None, id="letter-out-of-range"),
        pytest.param("(A) or (C)", COLOURS, None, id="two-letters-ambiguous"),
        pytest.param("", COLOURS, None, id="empty"),
        pytest.param("<answer>three</answer>", ["two", "three", "four"], "B", id="word-option"),
        pytest.param("<answer>three</answer>", ["2", "3", "4"], "B", id="number-word-to-digit"),
        pytest.param("There are 4 dogs.", ["two", "three", "four"], "C", id="digit-to-word"),
        pytest.param("no", ["(A) yes", "(B) no"], "B", id="prelabelled-options"),
        pytest.param("Yes", ["yes", "no"], "A", id="yes-no"),
    ],
)
def test_normalize_choice(reply: str, options: list[str], letter: str | None) -> None:
    assert normalize_choice(reply, options) == letter


# ---- streaming -------------------------------------------------------------------------

STREAM_SAMPLES = [
    TAGS_ROUND_1,
    TOOLS_ROUND_1,
    ROUND_2,
    "  lead <tool_ nothing <tool_call>{}</tool_call> tail  <tool_call",
    "<think>a <zoom>[[1,2</think>\n<tool_call>\n" + json.dumps({"name": "zoom"}) + "\nbroken",
    "x<TOOL_CALL>" + json.dumps({"name": "zoom", "arguments": {"bbox_2d": [1, 2, 3, 4]}}) + "<",
]


# Three-way splits on a coarser grid keep the square number of cases fast.
THREE_WAY_STEP = 5


def run_stream(chunks: list[str]) -> tuple[str, list[ZoomCall]]:
    parser = StreamingToolCallParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)] + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    return content, [e for e in events if isinstance(e, ZoomCall)]


@pytest.mark.parametrize(
    "text", [pytest.param(t, id=f"sample-{i}") for i, t in enumerate(STREAM_SAMPLES)]
)
def test_streaming_equals_non_streaming_at_every_split(text: str) -> None:
    """For every two- and three-way split, and character by character, the stream's content
    and calls equal the one-shot parse: chunk boundaries never leak or lose anything."""
    expected = (parse_turn(text).content, parse_zoom_calls(text))
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    splits += [
        [text[:i], text[i:j], text[j:]]
        for i in range(0, len(text), THREE_WAY_STEP)
        for j in range(i, len(text) + 1, THREE_WAY_STEP)
    ]
    splits.append(list(text))
    for chunks in splits:
        assert run_stream(chunks) == expected, chunks


def test_streaming_never_shows_tool_call_text() -> None:
    parser = StreamingToolCallParser()
    shown = ""
    for char in TOOLS_ROUND_1:
        shown += "".join(e.text for e in parser.feed(char) if isinstance(e, ContentDelta))
        assert "<tool_" not in shown and "bbox_2d" not in shown
    assert shown == "<think>I need the licence plate.</think>"


def test_streaming_shows_content_promptly() -> None:
    """Content that cannot start a tool call is shown at once; only a possible '<tool_'
    prefix is held back, and a tool call is reported the moment it closes."""
    parser = StreamingToolCallParser()
    assert parser.feed("<think>hello") == [ContentDelta("<think>hello")]
    assert parser.feed(" world</think> <tool_") == [ContentDelta(" world</think>")]
    assert parser.feed("call>\n") == []
    events = parser.feed(json.dumps({"name": "zoom", "arguments": {"bbox_2d": [1, 2, 3, 4]}}))
    assert events == []
    (call,) = parser.feed("\n</tool_call>")
    assert isinstance(call, ZoomCall) and call.box == (1.0, 2.0, 3.0, 4.0)
    assert parser.feed(" more") == [ContentDelta("  more")]  # with the blank held back
    assert parser.finish() == []


def test_streaming_reports_tag_zooms_when_closed() -> None:
    parser = StreamingToolCallParser()
    assert parser.feed("<think><zoom>[[1,2,3,4]]") == [ContentDelta("<think><zoom>[[1,2,3,4]]")]
    content, call = parser.feed("</zoom>")
    assert content == ContentDelta("</zoom>")
    assert isinstance(call, ZoomCall) and call.source == "tag"


def test_feed_after_finish_is_an_error() -> None:
    parser = StreamingToolCallParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


FUZZ_FRAGMENTS = [
    *("<think>", "</think>", "<rethink>", "</rethink>", "<answer>", "</answer>"),
    *("<zoom>", "</zoom>", "<tool_call>", "</tool_call>", "<tool_", "call>", "<", ">"),
    *("[[1,2,3,4]]", "[5, 6", "]", "(", ")", "nan", " ", "\n", "B", "red", "é"),
    json.dumps({"name": "zoom", "arguments": {"bbox_2d": [1, 2, 3, 4]}}),
    '{"name": "zoom"',
]
FUZZ_CASES = 400
FUZZ_MAX_FRAGMENTS = 25
FUZZ_MAX_CHUNK = 8


def test_random_protocol_soup_never_raises_and_streams_identically() -> None:
    """Seeded random mixes of protocol fragments: every reader copes, and the stream agrees
    with the one-shot parse for random chunk sizes."""
    rng = random.Random(0)
    for _ in range(FUZZ_CASES):
        pieces = rng.choices(FUZZ_FRAGMENTS, k=rng.randint(0, FUZZ_MAX_FRAGMENTS))
        text = "".join(pieces)
        turn = parse_turn(text)
        extract_answer(text)
        normalize_choice(text, ["red", "blue"])
        to_openai_tool_calls(turn.zooms)
        chunks, pos = [], 0
        while pos < len(text):
            step = rng.randint(1, FUZZ_MAX_CHUNK)
            chunks.append(text[pos : pos + step])
            pos += step
        assert run_stream(chunks) == (turn.content, turn.zooms), text
