"""Incremental zoom-call parsing for SSE: content is shown as soon as it cannot be part of a
``<tool_call>``, and each zoom request is reported the moment it is complete.

The parser runs the same block scanner as ``parse_zoom_calls`` over the growing text, so
for any chunking the content deltas join to ``parse_turn(text).content`` and the calls
equal ``parse_zoom_calls(text)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from magsrl.zoom.parsing import (
    TOOL_CALL_OPEN,
    Block,
    ZoomCall,
    block_calls,
    scan_blocks,
)

__all__ = ["ContentDelta", "StreamEvent", "StreamingToolCallParser"]


@dataclass(frozen=True)
class ContentDelta:
    """Text safe to show the client as ``content``."""

    text: str


# A content delta, or a complete zoom request: a tool call (never shown as content) or a
# tag zoom (whose text was already shown as content).
StreamEvent = ContentDelta | ZoomCall


def _partial_open_length(text: str) -> int:
    """How many trailing characters of ``text`` could begin a ``<tool_call>`` tag."""
    for size in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:].lower()):
            return size
    return 0


class StreamingToolCallParser:
    """Feed the model's text deltas in order; call ``finish`` once at the end.

    Content matches the non-streaming ``content`` exactly, which is stripped: leading
    blanks are dropped and trailing blanks are held back until more content follows them.
    """

    def __init__(self) -> None:
        self._text = ""
        self._scan_pos = 0  # where the block scanner resumes
        self._shown = 0  # content up to here has been emitted (or consumed by a tool call)
        self._started = False  # whether any non-blank content went out yet
        self._blanks = ""  # trailing whitespace held back
        self._finished = False

    def feed(self, delta: str) -> list[StreamEvent]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._text += delta
        events = self._advance(final=False)
        text = self._text
        # Hold back a tool call still being written, or text that may become one.
        if (
            self._scan_pos < len(text)
            and text[self._scan_pos : self._scan_pos + len(TOOL_CALL_OPEN)].lower()
            == TOOL_CALL_OPEN
        ):
            limit = self._scan_pos
        else:
            limit = len(text) - _partial_open_length(text)
        self._show(max(limit, self._shown), events)
        return events

    def finish(self) -> list[StreamEvent]:
        """Report what the end of the text settles: unclosed blocks become error calls, a
        partial ``<tool_`` that never completed is shown as content."""
        if self._finished:
            return []
        events = self._advance(final=True)
        self._show(len(self._text), events)
        self._finished = True
        return events

    def _advance(self, *, final: bool) -> list[StreamEvent]:
        blocks, self._scan_pos = scan_blocks(self._text, self._scan_pos, final=final)
        events: list[StreamEvent] = []
        for block in blocks:
            self._block(block, events)
        return events

    def _block(self, block: Block, events: list[StreamEvent]) -> None:
        if block.kind == "tool_call":
            self._show(block.start, events)
            self._shown = block.end  # the call's text is never content
        else:
            self._show(block.end, events)  # a tag zoom is content, and also a request
        events.extend(block_calls(self._text, block))

    def _show(self, upto: int, events: list[StreamEvent]) -> None:
        if upto <= self._shown:
            return
        piece, self._shown = self._text[self._shown : upto], upto
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return
            self._started = True
        piece = self._blanks + piece
        body = piece.rstrip()
        self._blanks = piece[len(body) :]
        if body:
            events.append(ContentDelta(body))
