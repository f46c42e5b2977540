"""The engine interface the policy's chat API and zoom loop are written against.

Messages are chat-template dicts whose image parts carry PIL images
(``{"type": "image", "image": <PIL.Image>}``); each engine turns them into what it needs
(processor inputs, or data URLs for an upstream server). For an engine that forwards bytes
(``passes_image_bytes``), a part may also carry the client's encoded image as ``source``
(engines/wire_images.py ``EncodedImage``), its ``image`` then opened but not decoded.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from magsrl.common.errors import InvalidInput, MagsrlError, NotFound
from magsrl.zoom.families import ModelFamily

FinishReason = Literal["stop", "length"]


class UnknownModel(NotFound):
    """The request names a model (base or adapter) the engine does not serve."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: up to the engine default, within the context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class GenerationRequest:
    messages: list[dict[str, Any]]
    sampling: SamplingParams
    tools: list[dict[str, Any]] | None = None
    model: str | None = None  # an adapter name; None or the base name: the base model


def split_images(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Messages for a chat template (image parts become ``{"type": "image"}``) and the
    images in order of appearance, as a processor takes them."""
    images: list[Image.Image] = []
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    images.append(part["image"])
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out, images


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[float] | None = None  # of each sampled token
    tokens: list[str] | None = None  # the sampled tokens as text, for OpenAI logprobs
    top_logprobs: list[list[tuple[str, float]]] | None = None


@dataclass
class GenerationResult:
    completions: list[Completion]
    prompt_token_ids: list[int] | None
    prompt_tokens: int
    engine_ms: float
    model: str
    # Time the request waited in the engine's own queue before its generation started, or
    # None where the engine cannot see it (an OpenAI upstream queues inside its own server,
    # so that wait is part of engine_ms there).
    queue_ms: float | None = None


@dataclass
class StreamDelta:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None


class Engine(abc.ABC):
    """What the policy needs from a model server."""

    base_model: str
    family: ModelFamily  # set once the model is known
    # Which distribution the log-probs an engine returns come from: "processed_logprobs" is
    # the one the tokens were sampled from (after temperature and top-k/top-p), the one the
    # learner scores. The hf engine records exactly that; the openai engine serves whatever
    # its upstream runs with (checked at start).
    logprobs_mode: str = "processed_logprobs"

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]:
        """Yields text deltas as tokens are sampled, then the full result last."""

    @abc.abstractmethod
    def model_names(self) -> list[str]:
        """The base model first, then loaded adapters."""

    @abc.abstractmethod
    async def load_adapter(self, name: str, path: str) -> None: ...

    @abc.abstractmethod
    async def unload_adapter(self, name: str) -> None: ...

    @abc.abstractmethod
    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model's processor resizes an image to (Qwen2.5-VL's box frame)."""

    def known_family(self) -> ModelFamily | None:
        """The family once it is known (loaded, or learned from an upstream), else None."""
        try:
            return self.family
        except (AttributeError, MagsrlError):
            return None

    async def start(self) -> None:
        """Load the model or connect to the upstream; /ready reports progress."""
        return None

    async def ready(self) -> str | None:
        return None

    async def close(self) -> None:
        return None

    def check_model(self, name: str | None) -> str | None:
        """The adapter to use for ``name`` (None for the base), or a 404."""
        if name is None or name == self.base_model:
            return None
        if name in self.model_names():
            return name
        raise UnknownModel(
            f"the model '{name}' does not exist; loaded: {', '.join(self.model_names())}",
            param="model",
        )

    # ---- full weights (full fine-tuning, POST /v1/weights) -----------------------------------
    # Engines that can load weights while serving override the three members below.
    weights_refusal: str | None = (
        "this engine cannot load full model weights while serving: the vLLM release magsrl "
        "pins exposes weight updates only in its development mode (docs/decisions.md). Train "
        "with LoRA (lora.enabled: true), or serve the policy with the hf engine (MAGSRL_ENGINE=hf)"
    )

    async def reload_weights(self, path: str | None, name: str | None) -> None:
        """Serve the weights of the model folder ``path`` under the base name and ``name``;
        ``path`` None goes back to the served checkpoint's own weights."""
        raise WeightsNotReloadable(self.weights_refusal or "weights cannot be reloaded")

    def loaded_weights(self) -> tuple[str | None, str | None]:
        """``(name, path)`` of the weights loaded by ``reload_weights``; None: the original."""
        return None, None


class WeightsNotReloadable(InvalidInput):
    """This engine cannot take new full weights while serving (vLLM's release has no route
    for it): a full fine-tuning run is the caller's choice to change."""
