"""Which folders the policy may load weights from, and what it reports about the weights it
serves. Full fine-tuning publishes every version as a whole model folder (``/v1/weights``);
LoRA versions are adapter folders (``/v1/adapters`` and vLLM's ``/v1/load_lora_adapter``).

Both kinds of path must be absolute and lie strictly inside the policy's ``runs_dir`` (the
trainer's run folders) or one of ``weights_roots``, after symlinks are resolved: whoever
holds the API key can make the policy (or the vLLM engine behind it) read a folder, but only
the trainer's output, never any file on the machine. A path outside the roots gets one
message whatever exists there, so the API tells nothing about the rest of the file system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from magsrl.common.errors import BadRequest
from magsrl.policy.config import PolicySettings
from magsrl.proto.policy import WeightsStatus
from magsrl.zoom.engine import Engine

CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# Longer than any real path (Linux PATH_MAX is 4096): refused before a system call sees it
# (a 5,000-character name raised ENAMETOOLONG out of a stat: a 500).
MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class FolderKind:
    """What a loadable folder holds: a marker file and at least one weights file."""

    what: str
    marker: str
    weights: tuple[str, ...]  # glob patterns; one match is enough

    def holds(self, folder: Path) -> bool:
        return (folder / self.marker).is_file() and any(
            any(folder.glob(pattern)) for pattern in self.weights
        )


MODEL_FOLDER = FolderKind("model", CONFIG_FILE, ("*.safetensors",))
# peft's save_pretrained: adapter_model.safetensors, or adapter_model.bin without safetensors.
ADAPTER_FOLDER = FolderKind(
    "peft adapter", ADAPTER_CONFIG_FILE, ("adapter_model.safetensors", "adapter_model.bin")
)


def confined_folder(path: str, roots: list[Path], kind: FolderKind, param: str = "path") -> Path:
    """``path`` resolved, if it is a ``kind`` folder strictly inside one of ``roots``; else a
    400 that says which folders are allowed and how to allow another."""
    allowed = ", ".join(str(root) for root in roots)
    outside = BadRequest(
        f"{param} is outside the folders this policy loads weights from ({allowed}); save "
        "versions under the trainer's runs folder (MAGSRL_RUNS_DIR, the same on both "
        "services) or add the folder to MAGSRL_WEIGHTS_ROOTS",
        param=param,
    )
    if len(path) > MAX_PATH_CHARS or "\x00" in path:
        raise outside
    if not Path(path).is_absolute():
        raise BadRequest(f"{param} '{path}' must be absolute", param=param)
    # realpath, not a check of the given string: a symlink that leads out of a root is
    # judged by its target.
    try:
        resolved = Path(os.path.realpath(path))
    except ValueError:  # a lone surrogate cannot become a file name (UnicodeEncodeError)
        raise outside from None
    if not any(resolved != root and resolved.is_relative_to(root) for root in roots):
        raise outside
    try:
        found = resolved.is_dir() and kind.holds(resolved)
    except OSError:  # unreadable inside a root: the operator's tree, naming the miss is fine
        found = False
    if not found:
        files = " and ".join((kind.marker, " or ".join(kind.weights)))
        raise BadRequest(
            f"no {kind.what} at '{path}': a {kind.what} folder has {files}", param=param
        )
    return resolved


def confined_model_folder(path: str, roots: list[Path]) -> Path:
    """A full fine-tuning version (``POST /v1/weights``)."""
    return confined_folder(path, roots, MODEL_FOLDER)


def confined_adapter_folder(path: str, roots: list[Path], param: str = "path") -> Path:
    """A LoRA version (``POST /v1/adapters``, ``POST /v1/load_lora_adapter``)."""
    return confined_folder(path, roots, ADAPTER_FOLDER, param)


def weights_status(engine: Engine, settings: PolicySettings) -> WeightsStatus:
    name, path = engine.loaded_weights()
    refusal = engine.weights_refusal
    return WeightsStatus(
        model=engine.base_model,
        name=name,
        path=path,
        reloadable=refusal is None,
        reason=refusal,
        roots=[str(root) for root in settings.allowed_weight_roots()],
    )
