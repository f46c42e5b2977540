"""What an OpenAI-compatible upstream (vLLM) answers, read as magsrl's own: its errors as
magsrl errors, its choices and stream chunks as ``Completion``s, its model card as a model
family, and a stream's chunks gathered per choice (``StreamState``). Pure functions over
decoded JSON; the engine (openai_upstream.py) does the HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx

from magsrl.common.errors import (
    Conflict,
    InvalidInput,
    MagsrlError,
    ResourceExhausted,
    ServiceUnavailable,
    TooLarge,
    UnprocessableEntity,
    UpstreamError,
)
from magsrl.engines.upstream_text import rebuilt_text, text_from_logprob_bytes
from magsrl.models.hub import model_config_file
from magsrl.zoom.engine import Completion, StreamDelta, UnknownModel
from magsrl.zoom.families import ModelFamily, family_for_config, get_family

# An upstream 4xx answers the caller's request as we forwarded it, so it is the caller's
# fault and keeps its kind; anything unlisted is plain invalid input.
_REFUSALS: dict[int, type[MagsrlError]] = {
    409: Conflict,
    413: TooLarge,
    422: UnprocessableEntity,
    429: ResourceExhausted,  # the upstream is saturated: not the caller's fault
}


def upstream_refusal(status: int, message: str, param: str | None) -> MagsrlError:
    """The error an upstream 4xx becomes here."""
    if status in (401, 403):
        # Our credentials, not the caller's: the operator must fix MAGSRL_UPSTREAM_API_KEY.
        return ServiceUnavailable(f"the upstream refused the policy's credentials: {message}")
    if status == 404:
        return UnknownModel(message, param=param or "model")
    return _REFUSALS.get(status, InvalidInput)(message, param=param)


FAMILY_FIELD = "family"  # magsrl's extension on a model card


def family_from_card(card: dict[str, Any], fallback: str | None) -> ModelFamily:
    """The family of the model a ``/v1/models`` card describes: the card's own ``family``
    (a magsrl policy), the ``model_type`` in ``config.json`` of its ``root`` folder (vLLM,
    when the folder is readable here), or ``fallback`` (the ``policy_family`` setting).
    Raises ValueError saying how to fix it when none applies."""
    if card.get(FAMILY_FIELD):
        return get_family(str(card[FAMILY_FIELD]))
    root = card.get("root")
    config = model_config_file(str(root)) if root else None
    if config is not None:
        return family_for_config(json.loads(config.read_text(encoding="utf-8")))
    if fallback:
        return get_family(fallback)
    raise ValueError(
        f"cannot learn the family of the upstream model {card.get('id')!r}: its model card "
        f"has no '{FAMILY_FIELD}', and its root {root!r} is neither a model folder nor in "
        "the Hugging Face cache here (HF_HOME); mount that cache, or set "
        "MAGSRL_POLICY_FAMILY to qwen2_5_vl or qwen3_vl"
    )


def stream_chunk(data: str, base_url: str) -> dict[str, Any]:
    """One SSE ``data:`` payload; an error event or anything but a JSON object is a 502."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise UpstreamError(f"upstream {base_url} streamed something that is not JSON") from exc
    if not isinstance(chunk, dict):
        raise UpstreamError(f"upstream {base_url} streamed something that is not a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise UpstreamError(f"upstream {base_url} failed mid-stream: {message}")
    return chunk


def raise_lora_error(resp: httpx.Response, path: str) -> None:
    """vLLM's answers to a failed /v1/load_lora_adapter (vllm/entrypoints/openai/models/
    serving.py load_lora_adapter) as the policy's own: a bad adapter or name is the
    caller's 400, not a 404 model or a 503; a missing route is a deployment fault."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        if resp.status_code == 404:  # FastAPI's own 404: the route is not mounted
            raise ServiceUnavailable(
                "the upstream has no /v1/load_lora_adapter: vLLM mounts it only with "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        return
    message = str(error.get("message"))
    if resp.status_code in (502, 503, 504):
        return
    if "already been loaded" in message:
        raise InvalidInput(f"upstream: {message}", param="name")
    # 404 no adapter at the path, 500 rank over --max-lora-rank or LoRA off, 400 bad fields
    raise InvalidInput(f"upstream could not load the adapter at '{path}': {message}", param="path")


def finish_reason(reason: str | None) -> Any:
    return "length" if reason == "length" else "stop"


def completion_from_choice(choice: dict[str, Any]) -> Completion:
    message = choice.get("message") or {}
    text = rebuilt_text(
        message.get("content"),
        [
            (tc["function"]["name"], tc["function"].get("arguments") or "{}")
            for tc in message.get("tool_calls") or []
        ],
    )
    if message.get("tool_calls"):  # the turn as sampled, not rebuilt (upstream_text.py)
        text = text_from_logprob_bytes(choice) or text
    logprobs = tokens = top = None
    content = (choice.get("logprobs") or {}).get("content")
    if content:
        logprobs = [float(t["logprob"]) for t in content]
        tokens = [t["token"] for t in content]
        top = [
            [(str(e["token"]), float(e["logprob"])) for e in t.get("top_logprobs") or []]
            for t in content
        ]
    return Completion(
        text=text,
        token_ids=list(choice.get("token_ids") or []),
        finish_reason=finish_reason(choice.get("finish_reason")),
        logprobs=logprobs,
        tokens=tokens,
        top_logprobs=top if top and any(top) else None,
    )


def raise_for(resp: httpx.Response, url: str) -> None:
    """Nothing for a success; an upstream 5xx is a 503 here, a 4xx the caller's error."""
    if resp.status_code < 400:
        return
    try:
        error = resp.json().get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        param = error.get("param") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message, param = resp.text[:500], None
    if resp.status_code >= 500:
        raise ServiceUnavailable(f"upstream {url}: {message}")
    raise upstream_refusal(resp.status_code, f"upstream: {message}", param)


class StreamState:
    """What one upstream stream has sent so far, per choice index."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self.calls: dict[int, dict[int, dict[str, Any]]] = {}
        self.ids: dict[int, list[int]] = {}
        self.finish: dict[int, str] = {}
        self.stop_reasons: dict[int, Any] = {}
        self.logprobs: dict[int, list[dict[str, Any]]] = {}
        self.usage: dict[str, Any] = {}
        self.prompt_ids: list[int] | None = None
        self.yielded = False

    def add(self, chunk: dict[str, Any]) -> list[StreamDelta]:
        self.usage = chunk.get("usage") or self.usage
        # vLLM sends the prompt's ids once, on the first chunk of each choice.
        self.prompt_ids = chunk.get("prompt_token_ids") or self.prompt_ids
        out = []
        for choice in chunk.get("choices") or []:
            i = choice["index"]
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            self.texts[i] = self.texts.get(i, "") + text
            for tc in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(i, {}).setdefault(tc["index"], {})
                fn = tc.get("function") or {}
                slot["name"] = slot.get("name", "") + (fn.get("name") or "")
                slot["arguments"] = slot.get("arguments", "") + (fn.get("arguments") or "")
            self.ids.setdefault(i, []).extend(choice.get("token_ids") or [])
            self.logprobs.setdefault(i, []).extend(
                (choice.get("logprobs") or {}).get("content") or []
            )
            if choice.get("finish_reason"):
                self.finish[i] = choice["finish_reason"]
                self.stop_reasons[i] = choice.get("stop_reason")
            if text:
                out.append(StreamDelta(index=i, text=text))
        return out
