"""The zoom protocols magsrl speaks, as a registry of data: magsrl's own two (tags and Hermes
tool calls) and the peers' (DeepEyes, Mini-o3, MGPO, Qwen3-VL Thinking, Chain-of-Focus), one
module each.
``get_protocol`` takes a name or an alias; ``resolve_protocol`` also takes ``auto`` and
picks by the model's name (the rule is in docs/protocols.md).

    from magsrl.zoom.protocols import get_protocol
    get_protocol("mini_o3").parse('<grounding>{"bbox_2d": [0.1, 0.1, 0.5, 0.5], ...}')
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from magsrl.zoom.protocols import (
    chain_of_focus,
    deepeyes,
    magsrl_tags,
    magsrl_tools,
    mgpo,
    mini_o3,
    qwen3_vl_thinking,
)
from magsrl.zoom.protocols.base import Feedback, ZoomProtocol

__all__ = [
    "DEFAULT",
    "PROTOCOLS",
    "Feedback",
    "ZoomProtocol",
    "get_protocol",
    "protocol_names",
    "resolve_protocol",
]

PROTOCOLS: dict[str, ZoomProtocol] = {
    p.name: p
    for p in (
        magsrl_tags.PROTOCOL,
        magsrl_tools.PROTOCOL,
        deepeyes.PROTOCOL,
        mini_o3.PROTOCOL,
        mgpo.PROTOCOL,
        qwen3_vl_thinking.PROTOCOL,
        chain_of_focus.PROTOCOL,
    )
}
_ALIASES: dict[str, str] = {a: p.name for p in PROTOCOLS.values() for a in p.aliases}
DEFAULT = magsrl_tags.PROTOCOL
AUTO = "auto"


def protocol_names() -> list[str]:
    """The registry's names, then the aliases, then ``auto``."""
    return [*PROTOCOLS, *_ALIASES, AUTO]


def get_protocol(name: str) -> ZoomProtocol:
    """An entry by name or alias; ValueError lists the known ones."""
    try:
        return PROTOCOLS[_ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(
            f"unknown protocol {name!r}; choose from {', '.join(protocol_names())}"
        ) from None


def resolve_protocol(name: str | None, model_names: Iterable[str | None] = ()) -> ZoomProtocol:
    """``name``'s entry; for ``auto`` (or None), the first protocol with an ``auto_match``
    pattern (a glob, ``*`` any run of characters) found in one of ``model_names`` (a served
    model id, an adapter name, a checkpoint path), case-insensitive; magsrl_tags when none
    matches."""
    if name not in (None, AUTO):
        return get_protocol(name)  # type: ignore[arg-type]
    names = [n.lower() for n in model_names if n]
    for protocol in PROTOCOLS.values():
        if any(fnmatch.fnmatchcase(n, f"*{p}*") for p in protocol.auto_match for n in names):
            return protocol
    return DEFAULT
