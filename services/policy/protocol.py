"""OpenAI chat-completions wire models, in the OpenAI spec's field order. Fields that are not
in the OpenAI spec are marked ``# extension``."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_N = 16
MAX_TOP_LOGPROBS = 20
# The seed goes to torch.manual_seed, which takes a signed 64-bit integer; vLLM bounds it the
# same way (vllm/entrypoints/openai/protocol.py: Field(None, ge=_LONG_INFO.min, le=_LONG_INFO.max)).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# A chat request is a shallow tree (the zoom tool's schema is 6 levels deep); 300 levels of
# tool parameters overflowed the chat template's recursion.
MAX_JSON_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a decoded JSON body cannot be tokenized, or None: nesting deeper than
    ``max_depth``, or a lone UTF-16 surrogate (JSON allows "\\ud800"; UTF-8 does not).
    Iterative, so a deep body cannot overflow the stack here either."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return (
                    f"{path or 'body'}: the text holds a lone UTF-16 surrogate, which is not "
                    "valid Unicode text; send UTF-8"
                )
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= max_depth:
            return f"{path or 'body'}: nested deeper than {max_depth} levels"
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth + 1, path))
                stack.append((child, depth + 1, f"{path}.{key}" if path else str(key)))
        else:
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
    return None


class ImageURL(BaseModel):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(BaseModel):
    class _Fn(BaseModel):
        name: str

    type: Literal["function"]
    function: _Fn


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    top_k: int | None = Field(None, ge=-1)  # extension (vLLM)
    return_token_ids: bool = False  # extension (vLLM): sampled and prompt token ids

    @model_validator(mode="before")
    @classmethod
    def _tokenizable(cls, data: Any) -> Any:
        problem = json_problem(data)
        if problem:
            raise ValueError(problem)
        return data

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    token_ids: list[int] | None = None  # extension (vLLM): the sampled token ids


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageInfo
    prompt_token_ids: list[int] | None = None  # extension (vLLM)


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    token_ids: list[int] | None = None  # extension (vLLM)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "magsrl"
    root: str | None = None  # extension (vLLM): the base model of an adapter
    parent: str | None = None  # extension (vLLM)
    # extension (magsrl): the model family (qwen2_5_vl, qwen3_vl), read from the model's own
    # config.json, so clients pick the box convention without guessing from a name.
    family: str | None = None
    # extension (magsrl): the distribution of the log-probs it returns (vLLM's
    # --logprobs-mode names), so an openai engine in front of it need not probe.
    logprobs_mode: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadAdapterRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="A peft adapter folder (adapter_config.json and adapter_model.safetensors) "
        "under the policy's runs_dir or weights_roots.",
    )
