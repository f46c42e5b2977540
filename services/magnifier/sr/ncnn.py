"""Reader for ncnn models: the text `.param` graph and the `.bin` weight blob.

Only reads; nothing here runs a graph. The converters in `convert.py` map the result onto torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PARAM_MAGIC = 7767517
# A key at or below this marks an array value ("-23310=1,0.2" is key 10, one element).
ARRAY_KEY_BASE = -23300

# The 4-byte tag in front of an auto-typed weight blob (ncnn's ModelBin type 0).
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056  # raw fp32 "with extra scaling": the data itself is plain fp32
TAG_FP32 = 0
TAG_BYTES = 4
ALIGN = 4
QUANT_TABLE_SIZE = 256  # entries of the legacy 8-bit lookup-table format
FP32_BYTES, FP16_BYTES = 4, 2
EXTERNAL_SIZE = -233  # a size of -233 means "taken from a second input blob at run time"
K_INT8_SCALE_TERM = 8  # shared by Convolution*, Deconvolution* and InnerProduct

ParamValue = int | float | str | list[int] | list[float]


class NcnnFormatError(ValueError):
    """The .param or .bin content does not follow the ncnn format (or does not match each other)."""


@dataclass
class NcnnLayer:
    """One line of a .param file, plus the arrays the .bin holds for it (in load order)."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, ParamValue]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, key: int, default: ParamValue) -> ParamValue:
        return self.params.get(key, default)

    def int_param(self, key: int, default: int) -> int:
        value = self.params.get(key, default)
        if not isinstance(value, int):
            raise NcnnFormatError(
                f"layer {self.name!r}: param {key} should be an int, got {value!r}"
            )
        return value


@dataclass
class NcnnModel:
    """A parsed ncnn model: layers in .param order, with weights if a .bin was read."""

    layers: list[NcnnLayer]
    blob_count: int

    def weighted_layers(self) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.weights]


def _parse_scalar(token: str) -> int | float | str:
    # ncnn's own rule: a value is a float when it contains '.' or an exponent, else an int.
    if token.startswith('"'):
        return token.strip('"')
    if any(ch in token for ch in ".eE"):
        return float(token)
    return int(token)


def _parse_kv(token: str, where: str) -> tuple[int, ParamValue]:
    key_text, sep, value_text = token.partition("=")
    if not sep:
        raise NcnnFormatError(f"{where}: expected key=value, got {token!r}")
    try:
        key = int(key_text)
        if key <= ARRAY_KEY_BASE:
            count_text, *items = value_text.split(",")
            count = int(count_text)
            if count != len(items):
                raise NcnnFormatError(f"{where}: array {token!r} declares {count} items")
            values = [_parse_scalar(item) for item in items]
            return ARRAY_KEY_BASE - key, values  # type: ignore[return-value]
        return key, _parse_scalar(value_text)
    except ValueError as exc:
        if isinstance(exc, NcnnFormatError):
            raise
        raise NcnnFormatError(f"{where}: cannot parse {token!r}: {exc}") from exc


def parse_param(text: str) -> NcnnModel:
    """Parse a text .param file: the magic line, "layers blobs", then one layer per line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise NcnnFormatError("param file is too short to hold the magic and the count line")
    if lines[0] != str(PARAM_MAGIC):
        raise NcnnFormatError(f"bad magic {lines[0]!r}: expected {PARAM_MAGIC} (text .param)")
    try:
        layer_count, blob_count = (int(tok) for tok in lines[1].split())
    except ValueError as exc:
        raise NcnnFormatError(f"bad count line {lines[1]!r}") from exc

    layers: list[NcnnLayer] = []
    for lineno, line in enumerate(lines[2:], start=3):
        tokens = line.split()
        where = f"param line {lineno}"
        if len(tokens) < 4:
            raise NcnnFormatError(f"{where}: too few fields in {line!r}")
        layer_type, name = tokens[0], tokens[1]
        n_in, n_out = int(tokens[2]), int(tokens[3])
        blobs_end = 4 + n_in + n_out
        if len(tokens) < blobs_end:
            raise NcnnFormatError(f"{where}: declares {n_in}+{n_out} blobs but lists fewer")
        params = dict(_parse_kv(tok, where) for tok in tokens[blobs_end:])
        layers.append(
            NcnnLayer(
                type=layer_type,
                name=name,
                inputs=tokens[4 : 4 + n_in],
                outputs=tokens[4 + n_in : blobs_end],
                params=params,
            )
        )
    if len(layers) != layer_count:
        raise NcnnFormatError(f"count line says {layer_count} layers, file has {len(layers)}")
    return NcnnModel(layers=layers, blob_count=blob_count)


class _BinCursor:
    """Sequential reader over the .bin bytes that mirrors ncnn's ModelBin::load."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise NcnnFormatError(
                f"bin file ends early: {what} needs {size} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left (wrong .bin for this .param?)"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def raw_fp32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(count * FP32_BYTES, what), dtype="<f4").copy()

    def auto(self, count: int, what: str) -> np.ndarray:
        """A tagged blob (ModelBin type 0). fp16 data is returned as fp16: widening is lossless
        and can wait, and keeping it halves converted files."""
        tag = int.from_bytes(self.take(TAG_BYTES, f"{what} tag"), "little")
        if tag == TAG_FP16:
            size = count * FP16_BYTES
            return np.frombuffer(self.take(_align(size), what)[:size], dtype="<f2").copy()
        if tag == TAG_INT8:
            raise NotImplementedError(
                f"{what}: int8-quantised ncnn weights (tag 0x{TAG_INT8:08X}) are not supported; "
                "use the fp16/fp32 export of this model"
            )
        if tag in (TAG_FP32, TAG_FP32_SCALED):
            return self.raw_fp32(count, what)
        if tag & 0xFF == 0:
            # ncnn reads raw fp32 whenever the first tag byte is 0, ignoring the rest.
            return self.raw_fp32(count, what)
        raise NotImplementedError(
            f"{what}: ncnn lookup-table quantised weights (tag 0x{tag:08X}, "
            f"{QUANT_TABLE_SIZE}-entry table) are not supported"
        )


def _align(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


def _check_no_int8(layer: NcnnLayer) -> None:
    if layer.int_param(K_INT8_SCALE_TERM, 0):
        raise NotImplementedError(f"layer {layer.name!r}: int8 scale terms are not supported")


# The param key that marks weights supplied at run time (no .bin data) per layer type.
_DYNAMIC_WEIGHT_KEY = {
    "Convolution": 19,
    "ConvolutionDepthWise": 19,
    "Deconvolution": 28,
    "DeconvolutionDepthWise": 28,
}


def _load_conv_like(
    layer: NcnnLayer, cur: _BinCursor, num_output_key: int, bias_key: int, size_key: int
) -> None:
    """Convolution(DepthWise), Deconvolution(DepthWise) and InnerProduct share this layout."""
    dynamic_key = _DYNAMIC_WEIGHT_KEY.get(layer.type)
    if dynamic_key is not None and layer.int_param(dynamic_key, 0):
        return
    num_output = layer.int_param(num_output_key, 0)
    size = layer.int_param(size_key, 0)
    layer.weights["weight"] = cur.auto(size, f"{layer.name}.weight")
    if layer.int_param(bias_key, 0):
        layer.weights["bias"] = cur.raw_fp32(num_output, f"{layer.name}.bias")
    _check_no_int8(layer)


def _load_layer(layer: NcnnLayer, cur: _BinCursor) -> None:
    kind = layer.type
    if kind in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise"):
        _load_conv_like(layer, cur, num_output_key=0, bias_key=5, size_key=6)
    elif kind == "InnerProduct":
        _load_conv_like(layer, cur, num_output_key=0, bias_key=1, size_key=2)
    elif kind == "PReLU":
        layer.weights["slope"] = cur.raw_fp32(layer.int_param(0, 0), f"{layer.name}.slope")
    elif kind == "MemoryData":
        dims = [layer.int_param(k, 0) for k in (0, 1, 11, 2)]  # w, h, d, c
        count = int(np.prod([d for d in dims if d])) if any(dims) else 1
        layer.weights["data"] = cur.raw_fp32(count, f"{layer.name}.data")
    elif kind == "BatchNorm":
        channels = layer.int_param(0, 0)
        for part in ("slope", "mean", "var", "bias"):
            layer.weights[part] = cur.raw_fp32(channels, f"{layer.name}.{part}")
    elif kind == "Scale":
        size = layer.int_param(0, 0)
        if size != EXTERNAL_SIZE:
            layer.weights["scale"] = cur.raw_fp32(size, f"{layer.name}.scale")
            if layer.int_param(1, 0):
                layer.weights["bias"] = cur.raw_fp32(size, f"{layer.name}.bias")
    elif kind == "Bias":
        layer.weights["bias"] = cur.raw_fp32(layer.int_param(0, 0), f"{layer.name}.bias")
    # Every other layer type used by SR graphs (Split, Concat, BinaryOp, Interp, ...) has no
    # weights; an unknown weighted type shows up as leftover bytes in load_ncnn's final check.


def load_ncnn(param_text: str, bin_data: bytes) -> NcnnModel:
    """Parse the graph and read every layer's arrays from the .bin, which must be used exactly."""
    model = parse_param(param_text)
    cur = _BinCursor(bin_data)
    for layer in model.layers:
        _load_layer(layer, cur)
    leftover = len(bin_data) - cur.pos
    if leftover:
        raise NcnnFormatError(
            f"bin file has {leftover} unread bytes after the last layer "
            f"(read {cur.pos} of {len(bin_data)}): wrong .bin, or a weighted layer type "
            "this reader does not know"
        )
    return model
