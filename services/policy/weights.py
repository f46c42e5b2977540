"""Full-weight reloads (``/v1/weights``): which folders the policy may load a model from, and
what it reports about the weights it serves. Full fine-tuning publishes every version as a
whole model folder; LoRA versions go through ``/v1/adapters`` instead.

A path must be an absolute model folder (``config.json`` and safetensors) strictly inside
the policy's ``runs_dir`` (the trainer's run folders) or one of ``weights_roots``, after
symlinks are resolved: whoever holds the API key can make the policy read a folder, but
only the trainer's output, never any file on the machine.
"""

from __future__ import annotations

from pathlib import Path

from magsrl.common.errors import BadRequest
from magsrl.policy.config import PolicySettings
from magsrl.proto.policy import WeightsStatus
from magsrl.zoom.engine import Engine

CONFIG_FILE = "config.json"


def confined_model_folder(path: str, roots: list[Path]) -> Path:
    """``path`` resolved, if it is a model folder inside one of ``roots``; else a 400 that
    says which folders are allowed and how to allow another."""
    folder = Path(path)
    if not folder.is_absolute():
        raise BadRequest(f"path '{path}' must be absolute", param="path")
    resolved = folder.resolve()  # a symlink that leads out of a root is judged by its target
    if not any(resolved != root and resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise BadRequest(
            f"path '{path}' is outside the folders this policy loads weights from ({allowed}); "
            "save versions under the trainer's runs folder (MAGSRL_RUNS_DIR, the same on both "
            "services) or add the folder to MAGSRL_WEIGHTS_ROOTS",
            param="path",
        )
    if not (resolved / CONFIG_FILE).is_file() or not any(resolved.glob("*.safetensors")):
        raise BadRequest(
            f"no model at '{path}': a model folder has {CONFIG_FILE} and *.safetensors files",
            param="path",
        )
    return resolved


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
