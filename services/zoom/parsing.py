"""Read a policy model's output: zoom requests in both protocol forms (Mags-RL ``<zoom>`` tags,
Hermes ``<tool_call>`` blocks), the think/rethink/answer structure, and the answer itself.

The public face of the parsers; each idea has its own module behind it:

- ``blocks``: where the ``<zoom>``/``<tool_call>`` blocks are (also incrementally, for SSE);
- ``zoom_requests``: what each block asks for, as ``ZoomCall``s;
- ``toolcalls``: zoom calls as OpenAI ``tool_calls`` with deterministic ids;
- ``tags``: the turn's sections and its format issues;
- ``answers``: the answer text.

Pure functions, no I/O. Nothing raises on model output: what cannot be used comes back as
a ``ZoomCall`` with ``error`` set, or as a ``format_issues`` entry.
"""

from __future__ import annotations

from magsrl.zoom.answers import extract_answer, strip_tags
from magsrl.zoom.blocks import TOOL_CALL_OPEN, Block, BlockKind, scan_blocks
from magsrl.zoom.tags import ParsedTurn, parse_turn
from magsrl.zoom.toolcalls import to_openai_tool_call, to_openai_tool_calls, tool_call_id
from magsrl.zoom.zoom_requests import (
    ZoomCall,
    block_calls,
    parse_zoom_calls,
    remove_tool_calls,
)

__all__ = [
    "TOOL_CALL_OPEN",
    "Block",
    "BlockKind",
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
