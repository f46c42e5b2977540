"""What a zoom protocol is, as data: one ``ZoomProtocol`` per way a checkpoint was trained
to ask for a zoom and to hear back. The loop (``magsrl.zoom.loop``) reads an entry instead of
branching on protocol names: the entry builds the system prompt and the user text, parses
a turn into ``ZoomCall``s, says which box convention and frame those numbers are in, lays
the crops out as the peer's own code did, and reads the answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from magsrl.common.coords import Convention
from magsrl.proto.policy import Zoom
from magsrl.proto.protocols import ProtocolInfo
from magsrl.proto.vocab import CropPlacement, ProtocolCrops
from magsrl.zoom.answers import extract_answer
from magsrl.zoom.boxes import FrameFn
from magsrl.zoom.families import QWEN2_5_VL, resized_size
from magsrl.zoom.zoom_requests import ZoomCall

Message = dict[str, Any]


@dataclass
class Feedback:
    """One turn's zooms, ready to be laid out as the protocol's feedback messages."""

    text: str  # the assistant turn as the model wrote it
    calls: list[ZoomCall]
    zooms: list[Zoom]
    images: list[Image.Image | None]  # each zoom's crop; None where it failed
    observations: list[int | None]  # each crop's image number (1 = the first crop)
    regions: list[list[dict[str, Any]]]  # magsrl's captioned parts per zoom
    tail: str  # magsrl's closing instruction (zoom_feedback)
    round_index: int  # 0-based: the peers' "Action k"
    crop_in: CropPlacement  # the served placement, for protocols that let it vary
    question: str = ""  # the user's question and options, for protocols that repeat them
    options: list[str] | None = None
    original: Image.Image | None = None  # the model's view of the original image


def answer_tag(text: str) -> str:
    return extract_answer(text)


def peer_arguments(call: ZoomCall) -> dict[str, Any]:
    """A parsed call as the arguments of an OpenAI tool call, in the peer's schema
    (``bbox_2d`` as the model wrote it, ``label`` when given); ``img_idx`` only when it
    points past the original, since most peers' schemas have no such argument."""
    assert call.box is not None
    arguments: dict[str, Any] = {"bbox_2d": [int(v) if v.is_integer() else v for v in call.box]}
    if call.label is not None:
        arguments["label"] = call.label
    if call.img_idx:
        arguments["img_idx"] = call.img_idx
    return arguments


@dataclass(frozen=True)
class ZoomProtocol:
    """One protocol. The descriptive fields are what ``GET /v1/protocols`` reports; the
    callables are its behaviour."""

    name: str
    title: str
    source: str
    call_format: str
    coordinates: str  # described for humans; ``convention`` is what the loop uses
    frame: str
    crop_in: ProtocolCrops
    observations: str
    answer_format: str
    max_rounds: int
    system_prompt: Callable[[str], str]  # the coordinate hint -> the system message
    parse: Callable[[str], list[ZoomCall]]
    feedback: Callable[[Feedback], list[Message]]
    user_text: Callable[[str, list[str] | None], str]
    answer: Callable[[str], str] = answer_tag
    convention: Convention | None = None  # None: the served model family's
    frame_pixels: tuple[int, int] | None = None  # (min, max) of the peer's processor frame
    tool_name: str | None = None
    tools: Callable[[], list[dict[str, Any]]] | None = None  # sent to the engine as tools
    # What /v1/chat/completions recognises: the OpenAI function (name and JSON Schema) a
    # client declares in ``tools`` to get this protocol's calls back as ``tool_calls``;
    # None where the protocol's call is no function (MGPO's JSON block).
    chat_tool: Callable[[], dict[str, Any]] | None = None
    chat_parse: Callable[[str], list[ZoomCall]] | None = None  # None: ``parse``
    tool_arguments: Callable[[ZoomCall], dict[str, Any]] = peer_arguments
    call_open: str = "<tool_call>"  # how a call starts in the text (held back when streaming)
    # A call a chat client sends back in an assistant turn (its arguments), as the model
    # writes it, where the template's <tool_call> rendering is not the peer's (Mini-o3).
    render_call: Callable[[dict[str, Any]], str] | None = None
    native: bool = False  # magsrl's own: the chat layer's incremental zoom parser serves it
    crop_wrapper: str | None = None
    format_issues: Callable[[str, bool], list[str]] | None = None  # (text, final)
    aliases: tuple[str, ...] = ()
    auto_match: tuple[str, ...] = field(default=())

    @property
    def chat_tool_name(self) -> str | None:
        return self.chat_tool()["function"]["name"] if self.chat_tool else None

    def frame_fn(self, served: FrameFn) -> FrameFn:
        """The frame absolute boxes refer to: the peer's processor resize where it states
        one (DeepEyes), else the served processor's (``served``)."""
        if self.frame_pixels is None:
            return served
        lo, hi = self.frame_pixels

        def frame(width: int, height: int) -> tuple[int, int]:
            return resized_size(width, height, QWEN2_5_VL, lo, hi)

        return frame

    def info(self) -> ProtocolInfo:
        return ProtocolInfo(
            name=self.name,
            aliases=list(self.aliases),
            title=self.title,
            source=self.source,
            call_format=self.call_format,
            tool_name=self.tool_name,
            chat_tool=self.chat_tool() if self.chat_tool else None,
            coordinates=self.coordinates,
            frame=self.frame,
            frame_pixels=list(self.frame_pixels) if self.frame_pixels else None,
            crop_in=self.crop_in,
            crop_wrapper=self.crop_wrapper,
            observations=self.observations,
            answer=self.answer_format,
            max_rounds=self.max_rounds,
            auto_match=list(self.auto_match),
        )


def prompt_tool(system_prompt: str) -> dict[str, Any]:
    """The function schema a peer wrote into its system prompt (the line after the ``<tools>`` line
    and ``</tools>``), so the chat API recognises the very schema the checkpoint read."""
    body = system_prompt.split("<tools>\n", 1)[1].split("</tools>", 1)[0]
    return json.loads(body)


def answer_issues(text: str, final: bool) -> list[str]:
    """The format check every ``<answer>`` protocol shares: the last turn must answer."""
    return ["the last round has no final <answer>"] if final and not _has_answer(text) else []


def _has_answer(text: str) -> bool:
    start = text.rfind("<answer>")
    return start >= 0 and bool(text[start + 8 :].split("</answer>")[0].strip())
