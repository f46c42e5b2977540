"""A friendly message for a mistyped key in a strict pydantic model: "unknown key
`gruop_size`; did you mean `group_size`?" instead of pydantic's "Extra inputs are not
permitted" with its documentation URL. Used by the run config, read from YAML by
``magsrl train`` and from JSON by ``POST /v1/runs``."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

# How close a key must be to a field's name to be suggested (difflib's ratio).
SUGGEST_CUTOFF = 0.6


def check_unknown_keys(model: type[BaseModel], data: Any) -> Any:
    """``data`` unchanged, or ValueError naming the first unknown key and its likeliest
    meaning. Meant for a ``model_validator(mode="before")``."""
    if not isinstance(data, dict):
        return data
    known = set(model.model_fields)
    known |= {f.alias for f in model.model_fields.values() if f.alias}
    unknown = [k for k in data if isinstance(k, str) and k not in known]
    if unknown:
        raise ValueError(unknown_key_message(unknown[0], sorted(known)))
    return data


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=SUGGEST_CUTOFF)
    if close:
        return f"unknown key `{key}`; did you mean `{close[0]}`?"
    return f"unknown key `{key}`; known keys: {', '.join(known)}"
