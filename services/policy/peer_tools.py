"""The peers' zoom tools on ``/v1/chat/completions``: which registered protocol a request's
``tools`` speak, and that protocol's calls as OpenAI ``tool_calls``.

A client serving a DeepEyes checkpoint declares DeepEyes' ``image_zoom_in_tool``; one
serving Mini-o3 declares the ``grounding`` function (``magsrl.zoom.protocols.mini_o3``).
Each protocol module declares its chat tool (``ZoomProtocol.chat_tool``), so this module
knows no names: it asks the registry. magsrl's own ``zoom`` (both magsrl protocols) keeps
the chat layer's incremental parser (``magsrl.policy.streaming``); a peer's calls are read
with its own parser, once its call has begun, at the end of the turn.

The arguments come back as the model wrote them, in the peer's convention (DeepEyes'
pixels of the resized image, Mini-o3's 0-1 of ``source``): the client runs the tool.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from magsrl.policy.streaming import ContentDelta
from magsrl.zoom.blocks import cut
from magsrl.zoom.protocols import PROTOCOLS, ZoomProtocol
from magsrl.zoom.toolcalls import tool_call_id

__all__ = ["PeerCallParser", "PeerTools", "peer_tools", "written_back"]

# A tool call ready for ``ToolCall(**...)``: {"id", "type", "function": {name, arguments}}.
OpenAICall = dict[str, Any]


@dataclass(frozen=True)
class PeerTools:
    """One peer protocol as the chat API serves it."""

    protocol: ZoomProtocol
    name: str  # the function name the client declared

    @property
    def forward_tools(self) -> bool:
        """Whether the engine gets the request's ``tools``: only where the checkpoint was
        trained with its schema rendered by the chat template (Qwen3-VL). DeepEyes and
        Chain-of-Focus read it in their own system prompt, which the client sends; Mini-o3's
        ``grounding`` is no function to the model at all. Rendering it again would put text
        in the prompt that the checkpoint never saw."""
        return self.protocol.tools is not None

    def parse(self, text: str) -> tuple[str, list[OpenAICall]]:
        """The content (the text without the call blocks, stripped) and the usable calls
        as OpenAI tool calls; ids number every call, usable or not, as the zoom path does."""
        read = self.protocol.chat_parse or self.protocol.parse
        calls = read(text)
        content = cut(text, [c.span for c in calls]).strip()
        out = [
            {
                "id": tool_call_id(call, index),
                "type": "function",
                "function": {
                    "name": self.name,
                    "arguments": json.dumps(self.protocol.tool_arguments(call)),
                },
            }
            for index, call in enumerate(calls)
            if call.usable and call.box is not None
        ]
        return content, out


def written_back(message: dict[str, Any], tools: PeerTools | None) -> dict[str, Any]:
    """An engine-format assistant message whose ``tool_calls`` of the peer's tool are put
    back into its text as the model writes them (``render_call``: Mini-o3's
    ``<grounding>``), since the chat template would render them as ``<tool_call>`` blocks
    the checkpoint never wrote. The joiner between content and call is a space (the
    sampled one is not in the message). Other messages come back unchanged."""
    render = tools.protocol.render_call if tools is not None else None
    calls = message.get("tool_calls") or []
    if render is None or message.get("role") != "assistant" or not calls:
        return message
    assert tools is not None
    ours = [c for c in calls if c["function"]["name"] == tools.name]
    written = []
    for call in ours:
        try:
            written.append(render(json.loads(call["function"]["arguments"])))
        except ValueError:
            written.append(call["function"]["arguments"])  # not JSON: as the client sent it
    content = message.get("content") or ""
    if isinstance(content, list):
        content = [*content, {"type": "text", "text": " " + " ".join(written)}]
    else:
        content = " ".join([content, *written]) if content else " ".join(written)
    out = {**message, "content": content}
    rest = [c for c in calls if c not in ours]
    if rest:
        out["tool_calls"] = rest
    else:
        out.pop("tool_calls")
    return out


def peer_tools(tool_names: Sequence[str], preferred: ZoomProtocol) -> PeerTools | None:
    """The peer protocol a request's tools speak, or None for magsrl's own zoom (and for
    tools no protocol declares: those get the zoom path, as before). Several protocols may
    declare one name (``image_zoom_in_tool``: DeepEyes, Chain-of-Focus, Qwen3-VL): the one
    the policy serves (``preferred``, its setting or ``auto`` by model name) wins, else
    the first in the registry."""
    names = set(tool_names)
    candidates = [p for p in PROTOCOLS.values() if p.chat_tool_name in names]
    if not candidates:
        return None
    chosen = preferred if preferred in candidates else candidates[0]
    if chosen.native:
        return None
    return PeerTools(chosen, chosen.chat_tool_name or "")


class PeerCallParser:
    """Streaming for a peer: content goes out as soon as it cannot be part of a call (before
    the protocol's ``call_open``); from the first call on, the text is held and read once
    at ``finish`` with the protocol's own parser, so the deltas join to exactly the
    non-streaming content and the calls are the non-streaming calls."""

    def __init__(self, tools: PeerTools) -> None:
        self.tools = tools
        self.opening = tools.protocol.call_open.lower()
        self.text = ""
        self.sent = ""  # the content emitted so far: always a prefix of the final content
        self.holding = False

    def feed(self, delta: str) -> list[ContentDelta]:
        self.text += delta
        if self.holding:
            return []
        lowered = self.text.lower()
        found = lowered.find(self.opening)
        if found >= 0:
            self.holding = True
            return self._send(self.text[:found].strip())
        return self._send(self.text[: len(self.text) - self._partial(lowered)].strip())

    def finish(self) -> list[ContentDelta | OpenAICall]:
        content, calls = self.tools.parse(self.text)
        events: list[ContentDelta | OpenAICall] = []
        events += self._send(content)
        return [*events, *calls]

    def _partial(self, lowered: str) -> int:
        """How many trailing characters could begin the call's opening."""
        for size in range(min(len(lowered), len(self.opening) - 1), 0, -1):
            if self.opening.startswith(lowered[-size:]):
                return size
        return 0

    def _send(self, content: str) -> list[ContentDelta]:
        # Stripped prefixes of the text grow monotonically, so ``content`` extends ``sent``
        # (trailing blanks are held until something follows them).
        if len(content) <= len(self.sent) or not content.startswith(self.sent):
            return []
        piece, self.sent = content[len(self.sent) :], content
        return [ContentDelta(piece)]
