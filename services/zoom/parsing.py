"""Read a policy model's output: zoom requests in both protocol forms (Mags-RL ``<zoom>`` tags,
Hermes ``<tool_call>`` blocks), the think/rethink/answer structure, and the answer itself.

Pure functions, no I/O. Nothing raises on model output: what cannot be used comes back as
a ``ZoomCall`` with ``error`` set, or as a ``format_issues`` entry. The incremental form of
the same scanner, for SSE, is ``magsrl.policy.streaming``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from magsrl.common.coords import Box, BoxError, check_box
from magsrl.proto.tools import ZOOM_TOOL_NAME, ZoomArguments

__all__ = [
    "Block",
    "ParsedTurn",
    "ZoomCall",
    "block_calls",
    "extract_answer",
    "parse_turn",
    "parse_zoom_calls",
    "remove_tool_calls",
    "scan_blocks",
    "strip_tags",
    "to_openai_tool_call",
    "to_openai_tool_calls",
    "tool_call_id",
]

BlockKind = Literal["zoom", "tool_call"]

# Tags are matched case-insensitively: cheap robustness against "<Answer>" and friends.
_OPEN_ANY = re.compile(r"<(zoom|tool_call)>", re.IGNORECASE)
_OPEN_TOOL = re.compile(r"<tool_call>", re.IGNORECASE)
_CLOSE: dict[str, re.Pattern[str]] = {
    "zoom": re.compile(r"</zoom>", re.IGNORECASE),
    "tool_call": re.compile(r"</tool_call>", re.IGNORECASE),
}
# What ends an unclosed block: any new request for a <zoom>, only a new <tool_call> for a
# tool call (its JSON may legitimately mention "<zoom>" in a label).
_INTERRUPT: dict[str, re.Pattern[str]] = {"zoom": _OPEN_ANY, "tool_call": _OPEN_TOOL}
TOOL_CALL_OPEN = "<tool_call>"
_LONGEST_OPEN = len(TOOL_CALL_OPEN)

_SECTION_TAG = re.compile(r"<(/?)(think|rethink|answer)>", re.IGNORECASE)
_SECTION_ORDER = ("think", "rethink", "answer")
_ANY_TAG = re.compile(r"</?(?:think|rethink|answer|zoom|tool_call)>", re.IGNORECASE)

_DECODER = json.JSONDecoder()
_BRACKET_GROUP = re.compile(r"\[([^\[\]]*)\]")
_NUMBER_SEPARATORS = re.compile(r"[\s,;]+")
_PARENS_TO_BRACKETS = str.maketrans("()", "[]")
_ID_HEX_CHARS = 8  # OpenAI-style ids look like call_<hex>; 8 hex digits is ample per message
_SNIPPET_CHARS = 40  # how much stray text a format issue quotes


@dataclass(frozen=True)
class ZoomCall:
    """One requested region. ``box`` holds the model's raw numbers in its own convention
    (not range-checked); ``box`` and ``img_idx`` are only meaningful when ``error`` is None.
    ``box`` is None when the request could not even be read as four finite numbers."""

    box: Box | None
    img_idx: int
    label: str | None
    source: Literal["tag", "tool_call"]
    error: str | None
    raw: str  # the whole <zoom>…</zoom> or <tool_call>…</tool_call> (shared by a tag's boxes)
    span: tuple[int, int]  # offsets of ``raw`` in the text

    @property
    def usable(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Block:
    """A ``<zoom>`` or ``<tool_call>`` block: ``[start, end)`` is the whole block, the inner
    range its body. An unclosed block ends where the next one opens, or at the text's end."""

    kind: BlockKind
    start: int
    end: int
    inner_start: int
    inner_end: int
    closed: bool


def scan_blocks(text: str, pos: int = 0, *, final: bool = True) -> tuple[list[Block], int]:
    """The blocks from ``pos`` on, and where a later scan should resume.

    With ``final=False`` (streaming) a block is only reported once more text cannot change
    it, so scanning a growing text in steps finds exactly what one final scan finds.
    """
    blocks: list[Block] = []
    while (opened := _OPEN_ANY.search(text, pos)) is not None:
        kind: BlockKind = "zoom" if opened.group(1).lower() == "zoom" else "tool_call"
        close = _CLOSE[kind].search(text, opened.end())
        interrupt = _INTERRUPT[kind].search(text, opened.end())
        if close is not None and (interrupt is None or close.start() < interrupt.start()):
            end, inner_end, closed = close.end(), close.start(), True
        elif interrupt is not None or final:
            end = inner_end = interrupt.start() if interrupt is not None else len(text)
            closed = False
        else:
            return blocks, opened.start()  # undecided until the close or a new open arrives
        blocks.append(Block(kind, opened.start(), end, opened.end(), inner_end, closed))
        pos = end
    # An opening tag that starts this far from the end may still be arriving.
    return blocks, max(pos, len(text) - _LONGEST_OPEN + 1)


def block_calls(text: str, block: Block) -> list[ZoomCall]:
    """The zoom calls one block holds: one per box for a tag, one for a tool call."""
    raw, span = text[block.start : block.end], (block.start, block.end)
    inner = text[block.inner_start : block.inner_end]
    if block.kind == "zoom":
        if not block.closed:
            return [ZoomCall(None, 0, None, "tag", "<zoom> is not closed by </zoom>", raw, span)]
        return [ZoomCall(box, 0, None, "tag", err, raw, span) for box, err in _tag_boxes(inner)]
    if not block.closed and block.end < len(text):
        error = "<tool_call> is not closed by </tool_call>"
        return [ZoomCall(None, 0, None, "tool_call", error, raw, span)]
    # A call left open at the end of generation (the sampler stopped on <|im_end|> or
    # max_tokens right after the JSON) is read like a closed one, as vLLM's hermes parser
    # does: its regex is `<tool_call>(.*?)</tool_call>|<tool_call>(.*)` (vllm/entrypoints/
    # openai/tool_parsers/hermes_tool_parser.py, Hermes2ProToolParser.tool_call_regex).
    call = _tool_call(inner, raw, span)
    if not block.closed and call.error is not None:
        error = f"<tool_call> is not closed by </tool_call> ({call.error})"
        return [ZoomCall(call.box, call.img_idx, None, "tool_call", error, raw, span)]
    return [call]


def parse_zoom_calls(text: str) -> list[ZoomCall]:
    """Every zoom request in ``text``, in textual order, usable or not."""
    blocks, _ = scan_blocks(text)
    return [call for block in blocks for call in block_calls(text, block)]


def remove_tool_calls(text: str) -> str:
    """``text`` without its ``<tool_call>`` blocks (unclosed ones too), not stripped."""
    blocks, _ = scan_blocks(text)
    return _cut(text, [(b.start, b.end) for b in blocks if b.kind == "tool_call"])


# ---- zoom request bodies ---------------------------------------------------------------


def _tag_boxes(inner: str) -> list[tuple[Box | None, str | None]]:
    body = inner.strip().translate(_PARENS_TO_BRACKETS)
    if not body:
        return [(None, "the <zoom> holds no box; write <zoom>[[x1, y1, x2, y2]]</zoom>")]
    items: list[object]
    start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
    try:
        if start < 0:
            raise ValueError("no bracket")
        value, _ = _DECODER.raw_decode(body, start)  # trailing junk after the JSON is fine
        items = _box_items(value)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep brackets
        # Not JSON ("[1 2 3 4]", "nan", an unbalanced bracket): read bracket groups of numbers.
        groups = _BRACKET_GROUP.findall(body) or [body]
        items = [[_number(t) for t in _NUMBER_SEPARATORS.split(g.strip()) if t] for g in groups]
    return [_read_box(item) for item in items]


def _box_items(value: object) -> list[object]:
    if isinstance(value, list) and value and all(isinstance(v, list | dict) for v in value):
        return list(value)  # several boxes
    return [value]


def _number(token: str) -> object:
    try:
        return float(token)
    except ValueError:
        return token


def _read_box(item: object) -> tuple[Box | None, str | None]:
    if isinstance(item, dict):
        item = item.get("bbox_2d", item.get("bbox"))
    if not isinstance(item, list):
        return None, f"expected a box [x1, y1, x2, y2], got {_short(item)}"
    try:
        return check_box(item), None
    except (BoxError, OverflowError) as exc:
        message = str(exc) if isinstance(exc, BoxError) else "box coordinates must be finite"
        return _four_finite(item), message


def _four_finite(values: Sequence[object]) -> Box | None:
    """The numbers of a box that parsed but was rejected (inverted), kept for diagnostics."""
    if len(values) != 4 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        return None
    try:
        floats = tuple(float(v) for v in values)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return floats if all(math.isfinite(v) for v in floats) else None  # type: ignore[return-value]


def _tool_call(inner: str, raw: str, span: tuple[int, int]) -> ZoomCall:
    def failed(reason: str, box: Box | None = None, img_idx: int = 0) -> ZoomCall:
        return ZoomCall(box, img_idx, None, "tool_call", reason, raw, span)

    body = inner.strip()
    if not body:
        return failed('the <tool_call> is empty; it should hold {"name": ..., "arguments": ...}')
    try:
        call, _ = _DECODER.raw_decode(body, max(body.find("{"), 0))
    except (ValueError, RecursionError) as exc:  # also: too deep, or a 5000-digit number
        return failed(f"the tool call is not valid JSON ({_json_reason(exc)})")
    if not isinstance(call, dict):
        return failed('the tool call must be a JSON object with "name" and "arguments"')
    name = call.get("name")
    if name != ZOOM_TOOL_NAME:
        return failed(f"unknown tool {_short(name)}; the only tool is {ZOOM_TOOL_NAME!r}")
    args = call.get("arguments", call.get("parameters"))  # some fine-tunes say "parameters"
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError) as exc:
            return failed(f"the zoom arguments are not valid JSON ({_json_reason(exc)})")
    if not isinstance(args, dict):
        return failed('the zoom call needs an "arguments" object with bbox_2d')
    box_guess, _ = _read_box(args.get("bbox_2d"))
    index = args.get("img_idx", 0)
    img_idx = index if isinstance(index, int) and not isinstance(index, bool) else 0
    # pydantic's lax mode reads true as 1; a boolean coordinate is a confused model, not a box.
    bbox = args.get("bbox_2d")
    if isinstance(index, bool) or (
        isinstance(bbox, list) and any(isinstance(v, bool) for v in bbox)
    ):
        return failed("bbox_2d and img_idx must be numbers, not true or false")
    try:
        parsed = ZoomArguments.model_validate(args)
    except ValidationError as exc:
        return failed("invalid zoom arguments: " + _plain_errors(exc), box_guess, img_idx)
    try:
        box = check_box(parsed.bbox_2d)
    except BoxError as exc:
        return failed(str(exc), _four_finite(parsed.bbox_2d), parsed.img_idx)
    return ZoomCall(box, parsed.img_idx, parsed.label, "tool_call", None, raw, span)


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at character {exc.pos}"
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _plain_errors(exc: ValidationError) -> str:
    parts: list[str] = []
    for error in exc.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        where = where.lstrip(".") or "arguments"
        if error["type"] == "missing":
            parts.append(f"{where} is required")
        elif error["type"] == "extra_forbidden":
            parts.append(f"{where} is not an argument of {ZOOM_TOOL_NAME}")
        else:
            message = re.sub(r"^\w+ should", "should", error["msg"])
            parts.append(f"{where} {message.replace(' after validation', '')}")
    return "; ".join(parts)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


# ---- OpenAI tool calls -----------------------------------------------------------------


def tool_call_id(call: ZoomCall, index: int, prefix: str = "call_", seed: str = "") -> str:
    """A deterministic id from the seed, the call's index and the call itself (its span and
    box too, so the boxes of one tag differ even if a caller numbers every call 0)."""
    key = f"{seed}\x00{index}\x00{call.span}\x00{call.box}\x00{call.raw}"
    digest = hashlib.sha1(key.encode()).hexdigest()
    return prefix + digest[:_ID_HEX_CHARS]


def to_openai_tool_call(
    call: ZoomCall, index: int, id_prefix: str = "call_", seed: str = ""
) -> dict[str, object]:
    """One OpenAI ``tool_calls`` entry for a usable call (tag zooms become zoom calls too)."""
    if call.box is None or not call.usable:
        raise ValueError(f"only usable zoom calls become tool calls; this one: {call.error}")
    arguments: dict[str, object] = {"bbox_2d": [int(v) if v.is_integer() else v for v in call.box]}
    if call.label is not None:
        arguments["label"] = call.label
    arguments["img_idx"] = call.img_idx
    return {
        "id": tool_call_id(call, index, id_prefix, seed),
        "type": "function",
        "function": {"name": ZOOM_TOOL_NAME, "arguments": json.dumps(arguments)},
    }


def to_openai_tool_calls(
    calls: Sequence[ZoomCall], id_prefix: str = "call_", seed: str = ""
) -> list[dict[str, object]]:
    """OpenAI ``tool_calls`` for the usable calls. Ids use each call's position in ``calls``
    (unusable ones counted), so a stream that numbers every ZoomCall event the same way
    gives the same ids as the one-shot parse."""
    return [
        to_openai_tool_call(call, index, id_prefix, seed)
        for index, call in enumerate(calls)
        if call.usable
    ]


# ---- turn structure --------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    name: str  # think, rethink or answer
    start: int
    end: int
    inner_start: int
    inner_end: int


@dataclass(frozen=True)
class ParsedTurn:
    """One assistant turn. ``think``/``rethink``/``answer`` are the stripped inner text of
    the last such block (an unclosed one runs to the next block or the end) or None."""

    think: str | None
    rethink: str | None
    answer: str | None
    zooms: list[ZoomCall]
    content: str  # the text without <tool_call> blocks, stripped: OpenAI's ``content``
    well_formed: bool
    format_issues: list[str]


def _cut(text: str, spans: Sequence[tuple[int, int]]) -> str:
    pieces, pos = [], 0
    for start, end in sorted(spans):
        pieces.append(text[pos : max(start, pos)])
        pos = max(pos, end)
    return "".join(pieces) + text[pos:]


def _uncovered(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, str]]:
    """The non-blank stretches of ``text`` outside ``spans``, with their offsets."""
    found, pos = [], 0
    for start, end in [*sorted(spans), (len(text), len(text))]:
        if start > pos and text[pos:start].strip():
            found.append((pos, text[pos:start].strip()))
        pos = max(pos, end)
    return found


def _mask(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """Blank out spans with spaces, so offsets into the result stay offsets into ``text``."""
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def _sections(masked: str) -> tuple[list[_Section], list[str]]:
    sections: list[_Section] = []
    issues: list[str] = []
    opened: dict[str, re.Match[str]] = {}
    for tag in _SECTION_TAG.finditer(masked):
        closing, name = tag.group(1) == "/", tag.group(2).lower()
        if not closing:
            if name in opened:
                issues.append(f"<{name}> opened again before </{name}>")
                prev = opened[name]
                sections.append(_Section(name, prev.start(), tag.start(), prev.end(), tag.start()))
            opened[name] = tag
        elif name in opened:
            start = opened.pop(name)
            sections.append(_Section(name, start.start(), tag.end(), start.end(), tag.start()))
        elif name == "think" and not sections and not opened:
            # Qwen3-style templates put "<think>" in the prompt, so the output opens implicitly.
            sections.append(_Section(name, 0, tag.end(), 0, tag.start()))
        else:
            issues.append(f"</{name}> without <{name}>")
    starts = [m.start() for m in _SECTION_TAG.finditer(masked) if m.group(1) != "/"]
    for name, tag in opened.items():
        issues.append(f"<{name}> is not closed")
        end = min((s for s in starts if s > tag.start()), default=len(masked))
        sections.append(_Section(name, tag.start(), end, tag.end(), end))
    return sorted(sections, key=lambda s: s.start), issues


def _structure(text: str) -> tuple[list[Block], list[_Section], list[str]]:
    blocks, _ = scan_blocks(text)
    tool_spans = [(b.start, b.end) for b in blocks if b.kind == "tool_call"]
    sections, issues = _sections(_mask(text, tool_spans))
    return blocks, sections, issues


def _last_inner(text: str, sections: list[_Section], name: str) -> str | None:
    found = [s for s in sections if s.name == name]
    return text[found[-1].inner_start : found[-1].inner_end].strip() if found else None


def parse_turn(text: str) -> ParsedTurn:
    """The structure of one assistant turn, with the format issues a format reward can use."""
    blocks, sections, issues = _structure(text)
    zooms = [call for block in blocks for call in block_calls(text, block)]
    answer = _last_inner(text, sections, "answer")
    issues += _format_issues(text, blocks, sections, zooms, answer)
    return ParsedTurn(
        think=_last_inner(text, sections, "think"),
        rethink=_last_inner(text, sections, "rethink"),
        answer=answer,
        zooms=zooms,
        content=remove_tool_calls(text).strip(),
        well_formed=not issues,
        format_issues=list(dict.fromkeys(issues)),  # each issue once, in order
    )


def _format_issues(
    text: str,
    blocks: list[Block],
    sections: list[_Section],
    zooms: list[ZoomCall],
    answer: str | None,
) -> list[str]:
    issues: list[str] = []
    names = [s.name for s in sections]
    issues += [f"more than one <{n}> block" for n in _SECTION_ORDER if names.count(n) > 1]
    if names != sorted(names, key=_SECTION_ORDER.index):
        issues.append("blocks out of order: <think>, then <rethink>, then <answer>")
    for outer in sections:
        issues += [
            f"<{inner.name}> inside <{outer.name}>"
            for inner in sections
            if inner is not outer and outer.start < inner.start < outer.end
        ]

    def inside(block: Block, name: str | None = None) -> _Section | None:
        return next(
            (s for s in sections if s.start < block.start < s.end and name in (None, s.name)),
            None,
        )

    for block in blocks:
        if block.kind == "zoom" and inside(block, "think") is None:
            issues.append("<zoom> outside <think>")
        elif block.kind == "tool_call" and (section := inside(block)) is not None:
            issues.append(f"<tool_call> inside <{section.name}>")
    # Unreadable requests are a format fault; a readable but invalid box (inverted, bad
    # img_idx) is left to the zoom-validity reward, so it is not counted twice.
    issues += [f"unreadable zoom request: {z.error}" for z in zooms if z.box is None]
    if "think" not in names and "rethink" not in names:
        issues.append("no <think> or <rethink> reasoning")
    if answer is not None and zooms:
        issues.append("both an <answer> and a zoom request: answer after the magnified regions")
    elif answer is None and not zooms:
        issues.append("neither an <answer> nor a zoom request")
    if answer == "":
        issues.append("empty <answer>")
    covered = [(s.start, s.end) for s in sections] + [(b.start, b.end) for b in blocks]
    answer_end = max((s.end for s in sections if s.name == "answer"), default=len(text))
    stray = _uncovered(text, covered)
    before = " ".join(seg for start, seg in stray if start < answer_end).strip()
    if before:
        issues.append(f"text outside the tags: {_short(before)}")
    if any(start >= answer_end for start, _ in stray):
        issues.append("text after </answer>")
    return issues


def strip_tags(text: str) -> str:
    """``text`` without protocol tag markup (the text between tags stays), stripped."""
    return _ANY_TAG.sub("", text).strip()


def extract_answer(text: str) -> str:
    """The last ``<answer>``'s inner text; failing that, the text outside the reasoning
    blocks (or, if there is none, all of it) without tags, tool calls or zoom requests."""
    blocks, sections, _ = _structure(text)
    answer = _last_inner(text, sections, "answer")
    if answer is not None:
        return answer
    requests = [(b.start, b.end) for b in blocks]
    outside = strip_tags(_cut(text, requests + [(s.start, s.end) for s in sections]))
    return outside or strip_tags(_cut(text, requests))
