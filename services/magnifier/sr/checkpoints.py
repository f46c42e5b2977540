"""Loading SR weights into a network: our prepared ``.safetensors`` or a basicsr ``.pth``
checkpoint (weights only, never unpickled code), matched strictly to the architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .backends import SAFETENSORS_SUFFIX, backend_spec, weights_path

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")
# basicsr checkpoints keep the weights under one of these keys (EMA weights are the better ones).
CHECKPOINT_KEYS = ("params_ema", "params", "state_dict")
DATA_PARALLEL_PREFIX = "module."


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from our `.safetensors` or a basicsr `.pth`/`.pt`, floats as float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == SAFETENSORS_SUFFIX:
        state: object = load_file(str(path))
    elif path.suffix in TORCH_SUFFIXES:
        try:
            # weights_only: a checkpoint is data, never code to unpickle and run.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"cannot read {path} as a weights-only torch checkpoint: {exc}"
            ) from exc
    else:
        raise ValueError(
            f"unrecognised checkpoint type {path.suffix!r} for {path}: "
            f"use {SAFETENSORS_SUFFIX} or one of {', '.join(TORCH_SUFFIXES)}"
        )
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    for key in CHECKPOINT_KEYS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} is not a state dict: expected tensors, under one of {CHECKPOINT_KEYS} "
            f"or at the top level; top-level keys: {sorted(map(str, state))[:10]}"
        )
    tensors = _strip_prefix({str(k): v for k, v in state.items()})
    # Prepared files keep fp16 source data as fp16; callers get one dtype regardless.
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def build_network(name: str, cache_dir: Path, checkpoint: Path | None = None) -> nn.Module:
    """The eval-mode, gradient-free network `name` with its weights loaded strictly."""
    spec = backend_spec(name)
    if checkpoint is None:
        if spec.source is None:
            raise ValueError(
                f"{name} has no bundled weights: pass a checkpoint, e.g. "
                f"build_network({name!r}, cache_dir, checkpoint=Path('SMFANet_x4.pth')) "
                "(a basicsr .pth/.pt or a .safetensors state dict)"
            )
        checkpoint = weights_path(cache_dir, name)
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"weights for {name} are not prepared ({checkpoint} is missing): "
                f"run `magsrl weights` (or prepare_weights({str(cache_dir)!r})) first"
            )
    state = load_checkpoint(checkpoint)
    net = spec.arch()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {checkpoint} does not fit {name}: {exc}") from exc
    return net.eval().requires_grad_(False)
