"""Where the zoom requests are in a model's output: the ``<zoom>`` and ``<tool_call>`` blocks,
closed or not, found by one scanner that also runs incrementally over a growing text (the
SSE stream, ``magsrl.policy.streaming``), plus the span helpers the other readers share.

Pure functions, no I/O; what a block *says* is read by ``magsrl.zoom.zoom_requests``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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


def cut(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with ``spans`` removed (overlapping spans are fine)."""
    pieces, pos = [], 0
    for start, end in sorted(spans):
        pieces.append(text[pos : max(start, pos)])
        pos = max(pos, end)
    return "".join(pieces) + text[pos:]
