"""vLLM's ``hermes`` tool-call parser semantics, written anew for the fake upstream.

It follows ``Hermes2ProToolParser`` in vllm/tool_parsers/hermes_tool_parser.py (earlier
vllm/entrypoints/openai/tool_parsers/hermes_tool_parser.py):

- ``extract_tool_calls`` (one-shot responses): every ``<tool_call>...</tool_call>`` body, or
  a ``<tool_call>`` left open at the end of the text, is read as JSON; the arguments go back
  re-serialised with ``json.dumps(..., ensure_ascii=False)``; ``content`` is only the text
  before the first ``<tool_call>`` (None when empty), so text between and after calls is
  dropped. If any body is not JSON, nothing is a call and the whole text is content.
- ``extract_tool_calls_streaming``: content is streamed up to the first ``<tool_call>``
  (holding back a suffix that could be the start of the tag); each call streams its name
  once, then the *verbatim* text of its ``arguments`` value as it grows.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

START = "<tool_call>"
END = "</tool_call>"
_CALLS = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')
_ARGS = re.compile(r'"arguments"\s*:\s*')


def tool_call_id() -> str:
    # vllm/entrypoints/chat_utils.py make_tool_call_id: "chatcmpl-tool-" + a random hex id
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def extract_tool_calls(text: str) -> tuple[str | None, list[dict[str, str]]]:
    """``(content, [{"name", "arguments"}])`` as vLLM's non-streaming path returns them."""
    if START not in text:
        return text, []
    try:
        bodies = [closed or open_ for closed, open_ in _CALLS.findall(text)]
        parsed = [json.loads(body) for body in bodies]
        calls = [
            {"name": p["name"], "arguments": json.dumps(p["arguments"], ensure_ascii=False)}
            for p in parsed
        ]
    except Exception:  # vLLM logs and returns the whole text as content
        return text, []
    content = text[: text.find(START)]
    return (content or None), calls


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _args_span(body: str) -> str | None:
    """The verbatim ``arguments`` value in a (possibly unfinished) call body: brackets are
    matched outside strings, and an unfinished value is returned as far as it goes."""
    match = _ARGS.search(body)
    if match is None:
        return None
    raw = body[match.end() :]
    if not raw or raw[0] not in "{[":
        return raw.rstrip().removesuffix("}").rstrip() if raw else raw
    close = "}" if raw[0] == "{" else "]"
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(raw):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == raw[0]:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return raw[: i + 1]
    return raw


@dataclass
class HermesStream:
    """Per-choice streaming state: feed the whole text so far, get the new delta."""

    sent_content: int = 0
    names: list[str] = field(default_factory=list)
    sent_args: list[str] = field(default_factory=list)
    called: bool = False

    def _bodies(self, text: str) -> list[str]:
        out, pos = [], 0
        while (start := text.find(START, pos)) != -1:
            begin = start + len(START)
            end = text.find(END, begin)
            if end == -1:
                raw = text[begin:]
                cut = _partial_suffix(raw, END)
                out.append((raw[:-cut] if cut else raw).strip())
                break
            out.append(text[begin:end].strip())
            pos = end + len(END)
        return out

    def delta(self, text: str) -> dict[str, Any] | None:
        """The ``delta`` object for this step, or None when there is nothing to send."""
        held = _partial_suffix(text, START)
        sendable = text.index(START) if START in text else len(text) - held
        content = None
        if sendable > self.sent_content:
            content = text[self.sent_content : sendable]
            self.sent_content = sendable
        calls: list[dict[str, Any]] = []
        for i, body in enumerate(self._bodies(text)):
            if i == len(self.names):
                name = _NAME.search(body)
                if name is None:
                    break  # a later call cannot start before this one has a name
                self.names.append(name.group(1))
                self.sent_args.append("")
                calls.append(
                    {
                        "index": i,
                        "id": tool_call_id(),
                        "type": "function",
                        "function": {"name": name.group(1)},
                    }
                )
            args = _args_span(body)
            if args is not None and len(args) > len(self.sent_args[i]):
                new = args[len(self.sent_args[i]) :]
                calls.append({"index": i, "function": {"arguments": new}})
                self.sent_args[i] = args
        if calls:
            self.called = True
        if content is None and not calls:
            return None
        out: dict[str, Any] = {}
        if content is not None:
            out["content"] = content
        if calls:
            out["tool_calls"] = calls
        return out
