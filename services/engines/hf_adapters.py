"""The LoRA adapters an in-process engine holds: which names are loaded from where, and how
one is attached to, detached from and activated on the peft model.

Errors say whose fault they are: a taken name, the limit, or a folder that is not a peft
adapter for this model is the caller's (``InvalidInput``); running out of memory while
loading a valid adapter is the server's (``ResourceExhausted``, a 503 to retry later).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from magsrl.common.errors import InvalidInput, ResourceExhausted

log = logging.getLogger("magsrl.policy.hf")
_NO_ADAPTER = (
    "no loadable peft adapter at '{path}' (a folder readable by the server, holding "
    "adapter_config.json and the adapter weights)"
)


class Adapters:
    def __init__(self, max_adapters: int) -> None:
        self.max_adapters = max_adapters
        self.paths: dict[str, str] = {}  # name -> folder, in load order

    def check_new(self, name: str, path: str, base_model: str) -> Path:
        """The adapter folder, once ``name`` and ``path`` are acceptable for a new adapter."""
        if name == base_model or name in self.paths:
            raise InvalidInput(
                f"a model named '{name}' is already loaded; unload it first or pick another name",
                param="name",
            )
        if len(self.paths) >= self.max_adapters:
            raise InvalidInput(
                f"already holding {len(self.paths)} adapters (the limit, "
                "MAGSRL_MAX_ADAPTERS); unload one first",
                param="name",
            )
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise InvalidInput(_NO_ADAPTER.format(path=path), param="path")
        return folder

    def attach(self, model: Any, name: str, folder: Path) -> Any:
        """``model`` with the adapter loaded under ``name`` (a new PeftModel the first time).
        Runs on the model thread."""
        from peft import PeftModel

        try:
            if isinstance(model, PeftModel):
                model.load_adapter(str(folder), adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise ResourceExhausted(
                f"out of memory loading the adapter at '{folder}'; unload an adapter or "
                "retry when the server is less busy"
            ) from exc
        except Exception as exc:  # a foreign or corrupt adapter is the caller's fault
            # The same words as for a missing folder, details only in the log: an error must
            # not tell a caller which paths exist or what the files there hold.
            log.warning("could not load the adapter at %s: %s", folder, exc)
            raise InvalidInput(_NO_ADAPTER.format(path=folder), param="path") from exc
        model.eval()
        self.paths[name] = str(folder)
        return model

    def detach(self, model: Any, name: str) -> Any:
        """``model`` without the adapter ``name``; the plain base model after the last one."""
        remaining = [n for n in self.paths if n != name]
        if remaining:
            # peft keeps pointing at a deleted adapter unless another is made active first.
            model.set_adapter(remaining[0])
            model.delete_adapter(name)
        else:
            # The last one: back to the plain base model, with no LoRA layers left in it.
            model = model.unload()
        del self.paths[name]
        return model

    @staticmethod
    @contextlib.contextmanager
    def active(model: Any, name: str | None) -> Iterator[None]:
        """Generation inside runs with adapter ``name``, or the base model for None."""
        from peft import PeftModel

        if not isinstance(model, PeftModel):
            yield
        elif name is None:
            with model.disable_adapter():
                yield
        else:
            model.set_adapter(name)
            yield
