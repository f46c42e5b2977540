"""Map parsed ncnn models onto the torch state_dicts of our architectures.

Weights are matched to torch modules in .param graph order with every shape checked, and the graph
around them (activations, normalisation, upsampling) is checked against what the torch arch does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .archs.compact import SRVGGNetCompact
from .archs.rrdbnet import LEAKY_SLOPE as RRDB_LEAKY_SLOPE
from .archs.rrdbnet import RESIDUAL_SCALE, RRDBNet
from .archs.span import SPAN
from .ncnn import NcnnLayer, NcnnModel

# Bump when the conversion changes so cached safetensors files get rebuilt.
CONVERTER_VERSION = "1"

# ncnn enum values this module checks for.
ACT_NONE = 0
ACT_LEAKY_RELU = 2  # Convolution's fused activation_type
INTERP_NEAREST = 1
BINARY_MUL = 2
ELTWISE_SUM = 1
# ncnn Convolution param keys.
K_NUM_OUTPUT, K_KERNEL_W, K_DILATION_W, K_STRIDE_W, K_PAD_LEFT = 0, 1, 2, 3, 4
K_ACT_TYPE, K_ACT_PARAMS, K_KERNEL_H = 9, 10, 11
FLOAT_TOLERANCE = 1e-4


class ConversionError(ValueError):
    """The ncnn graph does not have the structure the torch architecture expects."""


def _fail(layer: NcnnLayer | None, message: str) -> ConversionError:
    where = f"ncnn layer {layer.name!r} ({layer.type}): " if layer is not None else ""
    return ConversionError(where + message)


def _tensor(array: np.ndarray, shape: torch.Size) -> torch.Tensor:
    # fp16 source data stays fp16 (lossless, half the file size); loading upcasts.
    return torch.from_numpy(np.ascontiguousarray(array)).reshape(shape)


def _conv_tensors(layer: NcnnLayer, key: str, conv: nn.Conv2d) -> dict[str, torch.Tensor]:
    if layer.type != "Convolution":
        raise _fail(layer, f"expected a Convolution for {key}")
    kernel_w = layer.int_param(K_KERNEL_W, 0)
    kernel_h = layer.int_param(K_KERNEL_H, kernel_w)
    found = (layer.int_param(K_NUM_OUTPUT, 0), kernel_h, kernel_w)
    wanted = (conv.out_channels, *conv.kernel_size)
    if found != wanted:
        raise _fail(layer, f"{key}: (out, kh, kw) is {found}, torch expects {wanted}")
    geometry = (
        layer.int_param(K_STRIDE_W, 1),
        layer.int_param(K_DILATION_W, 1),
        layer.int_param(K_PAD_LEFT, 0),
    )
    if geometry != (conv.stride[0], conv.dilation[0], conv.padding[0]):  # type: ignore[index]
        raise _fail(layer, f"{key}: stride/dilation/pad {geometry} differ from torch")
    weight = layer.weights.get("weight")
    if weight is None or weight.size != conv.weight.numel():
        size = None if weight is None else weight.size
        raise _fail(layer, f"{key}: weight has {size} values, torch expects {conv.weight.numel()}")
    out = {f"{key}.weight": _tensor(weight, conv.weight.shape)}
    if (conv.bias is None) != ("bias" not in layer.weights):
        raise _fail(layer, f"{key}: bias presence differs from torch")
    if conv.bias is not None:
        out[f"{key}.bias"] = _tensor(layer.weights["bias"], conv.bias.shape)
    return out


def _prelu_tensors(layer: NcnnLayer, key: str, prelu: nn.PReLU) -> dict[str, torch.Tensor]:
    if layer.type != "PReLU":
        raise _fail(layer, f"expected a PReLU for {key}")
    slope = layer.weights["slope"]
    if slope.size != prelu.weight.numel():
        raise _fail(layer, f"{key}: {slope.size} slopes, torch expects {prelu.weight.numel()}")
    return {f"{key}.weight": _tensor(slope, prelu.weight.shape)}


def _fused_activation(layer: NcnnLayer) -> tuple[int, list[float]]:
    params = layer.get(K_ACT_PARAMS, [])
    return layer.int_param(K_ACT_TYPE, ACT_NONE), list(params)  # type: ignore[arg-type]


def _map_in_order(
    model: NcnnModel, slots: list[tuple[str, nn.Module]], name_check: bool = False
) -> dict[str, torch.Tensor]:
    """Pair weighted ncnn layers with torch modules one to one, in order, checking each pair."""
    layers = [layer for layer in model.weighted_layers() if layer.type != "MemoryData"]
    if len(layers) != len(slots):
        raise _fail(None, f"graph has {len(layers)} weighted layers, torch has {len(slots)}")
    state: dict[str, torch.Tensor] = {}
    for layer, (key, module) in zip(layers, slots, strict=True):
        # Exports that keep torch scope names ("/block_1/c1_r/eval_conv/Conv") must agree.
        if name_check and not layer.name.replace("/", ".").endswith(f".{key}.Conv"):
            raise _fail(layer, f"name does not belong to torch module {key}")
        if isinstance(module, nn.Conv2d):
            state.update(_conv_tensors(layer, key, module))
        elif isinstance(module, nn.PReLU):
            state.update(_prelu_tensors(layer, key, module))
        else:
            raise _fail(layer, f"no mapping for torch module {type(module).__name__} {key}")
    return state


def _modules(net: nn.Module, keys: list[str]) -> list[tuple[str, nn.Module]]:
    return [(key, net.get_submodule(key)) for key in keys]


def _weighted_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that own parameters, in registration order."""
    return [
        (name, module)
        for name, module in net.named_modules()
        if name and not list(module.children()) and list(module.parameters(recurse=False))
    ]


def _only(model: NcnnModel, layer_type: str) -> list[NcnnLayer]:
    return [layer for layer in model.layers if layer.type == layer_type]


def _producer(model: NcnnModel, blob: str) -> NcnnLayer:
    """The layer that computes `blob`, looking through ncnn's Split fan-outs."""
    for layer in model.layers:
        if blob in layer.outputs:
            return _producer(model, layer.inputs[0]) if layer.type == "Split" else layer
    raise _fail(None, f"no layer produces blob {blob!r}")


def _check_pixel_shuffle(model: NcnnModel, scale: int) -> None:
    shuffles = _only(model, "PixelShuffle")
    if len(shuffles) != 1 or shuffles[0].int_param(0, 0) != scale:
        raise _fail(None, f"expected one PixelShuffle by {scale}")


def convert_span(model: NcnnModel, net: SPAN) -> dict[str, torch.Tensor]:
    """SPAN's ncnn export holds the fused Conv3XC kernels (`*.eval_conv`)."""
    memory = _only(model, "MemoryData")
    mean = net.mean.flatten().numpy()
    if len(memory) != 1 or not np.allclose(memory[0].weights["data"], mean, atol=FLOAT_TOLERANCE):
        raise _fail(None, f"expected one MemoryData holding the RGB mean {mean.tolist()}")
    muls = [m for m in _only(model, "BinaryOp") if m.get(0, 0) == BINARY_MUL and m.get(1, 0)]
    if not any(abs(float(m.get(2, 0.0)) - net.img_range) < FLOAT_TOLERANCE for m in muls):
        raise _fail(None, f"expected the input scaled by img_range {net.img_range}")
    _check_pixel_shuffle(model, net.scale)
    # The concat feeds [conv_1, conv_2, block_1 output, block_6's activated c1_r]; the last is
    # the subtle one (the official code's in-place SiLU), so check the graph agrees.
    (concat,) = _only(model, "Concat")
    sources = [_producer(model, blob).name for blob in concat.inputs]
    expected = ["/conv_1/", "/conv_2/", "/block_1/Mul", "/block_6/act1/"]
    if len(sources) != len(expected) or not all(
        src.startswith(exp) for src, exp in zip(sources, expected, strict=True)
    ):
        raise _fail(concat, f"concat sources {sources} differ from SPAN's {expected}")

    blocks = [f"block_{i}.c{j}_r.eval_conv" for i in range(1, 7) for j in (1, 2, 3)]
    graph_order = ["conv_1.eval_conv", *blocks, "conv_2.eval_conv", "conv_cat", "upsampler.0"]
    return _map_in_order(model, _modules(net, graph_order), name_check=True)


def convert_compact(model: NcnnModel, net: SRVGGNetCompact) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact: convs and per-channel PReLU slopes alternate exactly as in `body`."""
    _check_pixel_shuffle(model, net.scale)
    (interp,) = _only(model, "Interp")
    factors = (float(interp.get(1, 1.0)), float(interp.get(2, 1.0)))
    if interp.int_param(0, 0) != INTERP_NEAREST or factors != (net.scale, net.scale):
        raise _fail(interp, f"expected nearest x{net.scale} upsampling of the input")
    for layer in _only(model, "Convolution"):
        if _fused_activation(layer)[0] != ACT_NONE:
            raise _fail(layer, "unexpected fused activation: Compact uses separate PReLUs")
    return _map_in_order(model, _weighted_modules(net))


def _rrdb_conv_is_activated(key: str) -> bool:
    # LeakyReLU follows dense convs 1-4 and the three high-resolution convs.
    return key.endswith(("conv1", "conv2", "conv3", "conv4", "conv_up1", "conv_up2", "conv_hr"))


def convert_rrdbnet(model: NcnnModel, net: RRDBNet) -> dict[str, torch.Tensor]:
    """RRDBNet: the export fuses LeakyReLU(0.2) into convs and scaled residuals into Eltwise."""
    slots = _weighted_modules(net)
    convs = _only(model, "Convolution")
    for layer, (key, _) in zip(convs, slots, strict=False):
        act_type, act_params = _fused_activation(layer)
        if _rrdb_conv_is_activated(key):
            if act_type != ACT_LEAKY_RELU or not np.isclose(act_params[0], RRDB_LEAKY_SLOPE):
                raise _fail(layer, f"{key} should carry LeakyReLU({RRDB_LEAKY_SLOPE})")
        elif act_type != ACT_NONE:
            raise _fail(layer, f"{key} should have no activation")
    for layer in _only(model, "Eltwise"):
        coeffs = layer.get(1, [])
        if layer.int_param(0, 0) != ELTWISE_SUM or not np.allclose(coeffs, [RESIDUAL_SCALE, 1]):
            raise _fail(layer, f"expected a residual sum scaled by {RESIDUAL_SCALE}")
    interps = _only(model, "Interp")
    if len(interps) != 2 or any(i.int_param(0, 0) != INTERP_NEAREST for i in interps):
        raise _fail(None, "expected two nearest-neighbour x2 upsamplings")
    return _map_in_order(model, slots)


_CONVERTERS: list[tuple[type[nn.Module], Callable[..., dict[str, torch.Tensor]]]] = [
    (SPAN, convert_span),
    (SRVGGNetCompact, convert_compact),
    (RRDBNet, convert_rrdbnet),
]


def convert_to_state_dict(model: NcnnModel, net: nn.Module) -> dict[str, torch.Tensor]:
    """Convert `model` for the (freshly built) `net`; the result loads with strict=True.

    Tensors keep the source precision (fp16 conv weights, fp32 biases and slopes).
    """
    for arch, converter in _CONVERTERS:
        if isinstance(net, arch):
            state = converter(model, net)
            break
    else:
        raise ConversionError(f"no ncnn converter for {type(net).__name__}")
    expected = net.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ConversionError(f"state_dict mismatch: missing {missing}, unexpected {extra}")
    return state
