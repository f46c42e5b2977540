"""Prompt texts of the zoom protocol, kept as ``prompts/*.md`` templates with ``$name`` slots
(``string.Template``, so the JSON-like boxes in the prose need no escaping), and their loader.

Prompts and their variables (``prompt_variables`` reads them from the files):

| prompt                                 | variables        |
|----------------------------------------|------------------|
| system_tags, system_tools              | coordinate_hint  |
| system_direct (zoom off)               | (none)           |
| stage1_suffix, force_grounding         | (none)           |
| zoom_region (text before each crop)    | index, box       |
| zoom_feedback (after the crops)        | (none)           |
| zoom_error, zoom_unavailable           | reason           |
| answer_options                         | question, options|
| coords_qwen2.5-vl, coords_pixel        | width, height    |
| coords_qwen3-vl, coords_norm1          | (none)           |
| judge_rubric (the judge's mllm method) | question, reference |
| judge_retry (after unreadable output)  | (none)           |

The suffixes (stage1_suffix, force_grounding) are appended to the user's question.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable

from magsrl.proto.vocab import Convention

__all__ = [
    "OPTION_LETTERS",
    "PromptError",
    "coordinate_hint",
    "format_box",
    "format_options",
    "load_prompt",
    "option_texts",
    "prompt_names",
    "prompt_variables",
    "region_caption",
    "render_prompt",
    "zoom_error_message",
]

_PROMPT_DIR = "prompts"
_SUFFIX = ".md"
# A prompt name is a file stem; refusing separators keeps load_prompt inside prompts/.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# norm1000 is the same frame as qwen3-vl (integers 0-1000), so both share one hint.
_HINT_PROMPTS: dict[Convention, str] = {
    Convention.QWEN2_5_VL: "coords_qwen2.5-vl",
    Convention.QWEN3_VL: "coords_qwen3-vl",
    Convention.NORM1000: "coords_qwen3-vl",
    Convention.PIXEL: "coords_pixel",
    Convention.NORM1: "coords_norm1",
}
# Conventions in absolute pixels: their hint must state the frame the model sees.
_SIZED = frozenset({Convention.QWEN2_5_VL, Convention.PIXEL})

# "(A) red", "A. red", "A) red", "A: red": a label a dataset may already carry.
_LABEL_RE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s+", re.IGNORECASE)


class PromptError(ValueError):
    """A prompt that does not exist, or a render that lacks one of the prompt's values."""


def _prompt_files() -> Traversable:
    return resources.files("magsrl.proto").joinpath(_PROMPT_DIR)


def prompt_names() -> list[str]:
    """Every prompt shipped with the package, sorted."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in _prompt_files().iterdir()
        if entry.name.endswith(_SUFFIX)
    )


@functools.cache
def load_prompt(name: str) -> str:
    """The raw template text of prompt ``name`` (a file stem such as ``system_tags``)."""
    stem = name.removesuffix(_SUFFIX)
    entry = _prompt_files().joinpath(stem + _SUFFIX) if _NAME_RE.match(stem) else None
    if entry is None or not entry.is_file():
        raise PromptError(f"unknown prompt {name!r}; known prompts: {', '.join(prompt_names())}")
    return entry.read_text(encoding="utf-8")


def prompt_variables(name: str) -> frozenset[str]:
    """The ``$name`` slots prompt ``name`` needs."""
    return frozenset(string.Template(load_prompt(name)).get_identifiers())


def render_prompt(name: str, **values: object) -> str:
    """Prompt ``name`` with its slots filled (extra values are ignored), surrounding
    whitespace stripped so prompts compose without stray blank lines."""
    template = string.Template(load_prompt(name))
    try:
        text = template.substitute({key: str(value) for key, value in values.items()})
    except KeyError as exc:
        needed = ", ".join(sorted(prompt_variables(name)))
        raise PromptError(
            f"prompt {name!r} needs a value for ${exc.args[0]} (it uses: {needed})"
        ) from None
    return text.strip()


def coordinate_hint(
    convention: Convention | str, width: int | None = None, height: int | None = None
) -> str:
    """How boxes are written in ``convention``. The pixel conventions need the frame the
    model sees: the original size for ``pixel``, the processor's resized size for
    ``qwen2.5-vl``."""
    try:
        conv = Convention(convention)
    except ValueError:
        known = ", ".join(c.value for c in Convention)
        raise PromptError(f"unknown box convention {convention!r}; known: {known}") from None
    if conv in _SIZED:
        if width is None or height is None or width <= 0 or height <= 0:
            raise PromptError(
                f"the {conv.value} coordinate hint needs the image's width and height "
                f"in pixels, got width={width}, height={height}"
            )
        return render_prompt(_HINT_PROMPTS[conv], width=width, height=height)
    return render_prompt(_HINT_PROMPTS[conv])


def option_texts(options: Sequence[str]) -> list[str]:
    """The options without labels a dataset already put on them ("(A) red" -> "red").

    Labels are only removed when every option carries its own letter in order, so an
    option that merely starts like a label ("A. Lincoln" alone) keeps its text.
    """
    stripped: list[str] = []
    for letter, option in zip(OPTION_LETTERS, options, strict=False):
        match = _LABEL_RE.match(option)
        if match is None or (match.group(1) or match.group(2)).upper() != letter:
            return [option.strip() for option in options]
        stripped.append(option[match.end() :].strip())
    return stripped


def format_options(question: str, options: Sequence[str]) -> str:
    """The question with its options as ``(A) ...`` lines and the instruction to answer
    with a letter."""
    if not options:
        raise PromptError("a multiple-choice question needs at least one option")
    if len(options) > len(OPTION_LETTERS):
        raise PromptError(
            f"at most {len(OPTION_LETTERS)} options can be lettered, got {len(options)}"
        )
    lines = "\n".join(
        f"({letter}) {text}"
        for letter, text in zip(OPTION_LETTERS, option_texts(options), strict=False)
    )
    return render_prompt("answer_options", question=question.strip(), options=lines)


def format_box(box: Sequence[float]) -> str:
    """``[x1, y1, x2, y2]`` as the model would write it: integral values without ``.0``."""
    parts = (str(int(v)) if float(v).is_integer() else f"{v:g}" for v in box)
    return "[" + ", ".join(parts) + "]"


def region_caption(index: int, box: Sequence[float]) -> str:
    """The text placed before the ``index``-th returned crop, ``box`` in the model's own
    convention (so it can refer back to what it asked for)."""
    return render_prompt("zoom_region", index=index, box=format_box(box))


def zoom_error_message(reason: str, hint: str | None = None) -> str:
    """The tool error returned for an unusable zoom; ``hint`` (from ``coordinate_hint``)
    restates the convention for models that lose track of the system prompt."""
    text = render_prompt("zoom_error", reason=reason.strip())
    return f"{text} {hint}" if hint else text
