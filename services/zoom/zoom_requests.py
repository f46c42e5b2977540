"""What a zoom request says: each ``<zoom>`` tag's boxes and each Hermes ``<tool_call>``'s
arguments, read leniently (JSON or bare numbers, parentheses, "parameters" for "arguments")
into ``ZoomCall``s. Nothing raises on model output: what cannot be used comes back as a
``ZoomCall`` with ``error`` set, which the loop returns to the model as a tool error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from magsrl.common.coords import Box, BoxError, check_box
from magsrl.proto.tools import ZOOM_TOOL_NAME, ZoomArguments
from magsrl.zoom.blocks import Block, cut, scan_blocks

_DECODER = json.JSONDecoder()
_BRACKET_GROUP = re.compile(r"\[([^\[\]]*)\]")
_NUMBER_SEPARATORS = re.compile(r"[\s,;]+")
_PARENS_TO_BRACKETS = str.maketrans("()", "[]")
_SNIPPET_CHARS = 40  # how much stray text an error message quotes


@dataclass(frozen=True)
class ZoomCall:
    """One requested region. ``box`` holds the model's raw numbers in its own convention
    (not range-checked); ``box`` and ``img_idx`` are only meaningful when ``error`` is None.
    ``box`` is None when the request could not even be read as four finite numbers."""

    box: Box | None
    img_idx: int
    label: str | None
    source: Literal["tag", "tool_call", "grounding", "json"]  # the last two: peer protocols
    error: str | None
    raw: str  # the whole <zoom>…</zoom> or <tool_call>…</tool_call> (shared by a tag's boxes)
    span: tuple[int, int]  # offsets of ``raw`` in the text

    @property
    def usable(self) -> bool:
        return self.error is None


def block_calls(text: str, block: Block, tool_name: str = ZOOM_TOOL_NAME) -> list[ZoomCall]:
    """The zoom calls one block holds: one per box for a tag, one for a tool call (to
    ``tool_name``: a protocol's zoom tool, ``zoom`` for magsrl's own)."""
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
    call = _tool_call(inner, raw, span, tool_name)
    if not block.closed and call.error is not None:
        error = f"<tool_call> is not closed by </tool_call> ({call.error})"
        return [ZoomCall(call.box, call.img_idx, None, "tool_call", error, raw, span)]
    return [call]


def parse_zoom_calls(text: str, tool_name: str = ZOOM_TOOL_NAME) -> list[ZoomCall]:
    """Every zoom request in ``text``, in textual order, usable or not."""
    blocks, _ = scan_blocks(text)
    return [call for block in blocks for call in block_calls(text, block, tool_name)]


def remove_tool_calls(text: str) -> str:
    """``text`` without its ``<tool_call>`` blocks (unclosed ones too), not stripped."""
    blocks, _ = scan_blocks(text)
    return cut(text, [(b.start, b.end) for b in blocks if b.kind == "tool_call"])


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
        return None, f"expected a box [x1, y1, x2, y2], got {short(item)}"
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


def _tool_call(
    inner: str, raw: str, span: tuple[int, int], tool_name: str = ZOOM_TOOL_NAME
) -> ZoomCall:
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
    if name != tool_name:
        return failed(f"unknown tool {short(name)}; the only tool is {tool_name!r}")
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


def short(value: object) -> str:
    """``value`` quoted for an error message, cut to a snippet."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"
