"""What an engine reads from its settings, as structural types.

The policy's ``PolicySettings`` satisfies both; so does any object with these attributes (a
test's, a benchmark's). Declaring them here keeps the engines below the services: they never
import ``magsrl.policy``.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import SecretStr


class EngineSettings(Protocol):
    """Shared by every engine: which model, under which name, and the processor's pixel bounds
    (the model's view of an image, which boxes in its frame depend on)."""

    @property
    def policy_model(self) -> str: ...
    @property
    def served_model_name(self) -> str | None: ...
    @property
    def min_image_pixels(self) -> int | None: ...
    @property
    def max_image_pixels_model(self) -> int | None: ...


class HFEngineSettings(EngineSettings, Protocol):
    """The in-process transformers engine: device, batching, context and adapter limits."""

    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def torch_threads(self) -> int | None: ...
    @property
    def max_context(self) -> int | None: ...
    @property
    def default_max_tokens(self) -> int: ...
    @property
    def max_adapters(self) -> int: ...
    @property
    def batch_wait_ms(self) -> float: ...
    @property
    def max_batch(self) -> int: ...


class UpstreamEngineSettings(EngineSettings, Protocol):
    """The engine that forwards to an OpenAI-compatible server (vLLM in production)."""

    @property
    def upstream_url(self) -> str: ...
    @property
    def upstream_api_key(self) -> SecretStr | None: ...
    @property
    def upstream_timeout_s(self) -> float: ...
    @property
    def upstream_logprobs_mode(self) -> str: ...
