"""The answer in a model's output: the last ``<answer>``, or failing that the text outside
the reasoning and the zoom requests. Scorers, the loop and eval all read answers here.
"""

from __future__ import annotations

import re

from magsrl.zoom.blocks import cut
from magsrl.zoom.tags import last_inner, structure

_ANY_TAG = re.compile(r"</?(?:think|rethink|answer|zoom|tool_call)>", re.IGNORECASE)


def strip_tags(text: str) -> str:
    """``text`` without protocol tag markup (the text between tags stays), stripped."""
    return _ANY_TAG.sub("", text).strip()


def extract_answer(text: str) -> str:
    """The last ``<answer>``'s inner text; failing that, the text outside the reasoning
    blocks (or, if there is none, all of it) without tags, tool calls or zoom requests."""
    blocks, sections, _ = structure(text)
    answer = last_inner(text, sections, "answer")
    if answer is not None:
        return answer
    requests = [(b.start, b.end) for b in blocks]
    outside = strip_tags(cut(text, requests + [(s.start, s.end) for s in sections]))
    return outside or strip_tags(cut(text, requests))
