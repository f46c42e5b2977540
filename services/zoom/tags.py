"""The structure of one assistant turn in the Mags-RL protocol: its ``<think>``,
``<rethink>`` and ``<answer>`` sections, its zoom requests, and every way it departs from
the format (the format reward's input). Pure functions; nothing raises on model output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from magsrl.zoom.blocks import Block, scan_blocks
from magsrl.zoom.zoom_requests import ZoomCall, block_calls, remove_tool_calls, short

_SECTION_TAG = re.compile(r"<(/?)(think|rethink|answer)>", re.IGNORECASE)
_SECTION_ORDER = ("think", "rethink", "answer")


@dataclass(frozen=True)
class Section:
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


def _sections(masked: str) -> tuple[list[Section], list[str]]:
    sections: list[Section] = []
    issues: list[str] = []
    opened: dict[str, re.Match[str]] = {}
    for tag in _SECTION_TAG.finditer(masked):
        closing, name = tag.group(1) == "/", tag.group(2).lower()
        if not closing:
            if name in opened:
                issues.append(f"<{name}> opened again before </{name}>")
                prev = opened[name]
                sections.append(Section(name, prev.start(), tag.start(), prev.end(), tag.start()))
            opened[name] = tag
        elif name in opened:
            start = opened.pop(name)
            sections.append(Section(name, start.start(), tag.end(), start.end(), tag.start()))
        elif name == "think" and not sections and not opened:
            # Qwen3-style templates put "<think>" in the prompt, so the output opens implicitly.
            sections.append(Section(name, 0, tag.end(), 0, tag.start()))
        else:
            issues.append(f"</{name}> without <{name}>")
    starts = [m.start() for m in _SECTION_TAG.finditer(masked) if m.group(1) != "/"]
    for name, tag in opened.items():
        issues.append(f"<{name}> is not closed")
        end = min((s for s in starts if s > tag.start()), default=len(masked))
        sections.append(Section(name, tag.start(), end, tag.end(), end))
    return sorted(sections, key=lambda s: s.start), issues


def structure(text: str) -> tuple[list[Block], list[Section], list[str]]:
    """The blocks, the sections (tool calls masked out first) and the section issues."""
    blocks, _ = scan_blocks(text)
    tool_spans = [(b.start, b.end) for b in blocks if b.kind == "tool_call"]
    sections, issues = _sections(_mask(text, tool_spans))
    return blocks, sections, issues


def last_inner(text: str, sections: list[Section], name: str) -> str | None:
    """The stripped inner text of the last ``name`` section, or None."""
    found = [s for s in sections if s.name == name]
    return text[found[-1].inner_start : found[-1].inner_end].strip() if found else None


def parse_turn(text: str) -> ParsedTurn:
    """The structure of one assistant turn, with the format issues a format reward can use."""
    blocks, sections, issues = structure(text)
    zooms = [call for block in blocks for call in block_calls(text, block)]
    answer = last_inner(text, sections, "answer")
    issues += _format_issues(text, blocks, sections, zooms, answer)
    return ParsedTurn(
        think=last_inner(text, sections, "think"),
        rethink=last_inner(text, sections, "rethink"),
        answer=answer,
        zooms=zooms,
        content=remove_tool_calls(text).strip(),
        well_formed=not issues,
        format_issues=list(dict.fromkeys(issues)),  # each issue once, in order
    )


def _format_issues(
    text: str,
    blocks: list[Block],
    sections: list[Section],
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

    def inside(block: Block, name: str | None = None) -> Section | None:
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
        issues.append(f"text outside the tags: {short(before)}")
    if any(start >= answer_end for start, _ in stray):
        issues.append("text after </answer>")
    return issues
