"""GPU benchmark: the learner's step on Qwen2.5-VL 3B and 7B (LoRA, and full fine-tuning
with fp32 master weights) and the magnifier's SPAN x4 throughput, on one GPU, with a
same-run baseline (plain matmuls and a device copy) so every MFU has a local reference.

Standalone by design: the GPU machine has torch, transformers, peft and nothing of magsrl,
and no network. Models are random-initialised from config (nothing is downloaded); SPAN is
loaded by file path from services/magnifier/sr/archs/span.py, which imports only torch.
Each case catches its own OOM or error and the run goes on; cases that would start after
``--budget-s`` are skipped, so the run stays within its time slot.

What a learner step is here: one micro-batch of ``--batch`` sequences, each a random image
of ``--image-px``² (1008² = 1.02 MP = 1296 image tokens) between a ``--prompt-tokens``
prompt and ``--completion-tokens`` completion, ``mm_token_type_ids`` passed so positions are
3-D M-RoPE as in training (docs: environment.md), logits only over the completion
(``logits_to_keep``, as magsrl's learner does), cross-entropy, backward, one AdamW step.
Gradient checkpointing (non-reentrant) on every decoder layer and vision block, sdpa
attention. bf16 compute under autocast. LoRA: bf16 frozen base, fp32 adapters (peft's
default), r 16 / alpha 32 / dropout 0.05 on every linear of the language model (magsrl's
defaults, services/trainer/run_config.py LoraSettings). Full: fp32 master weights, fp32
grads and AdamW states (16 B/param: 7B needs 133 GB), autocast without its weight cache
(the cache would hold a bf16 copy of every weight through the forward).

MFU follows PaLM (Chowdhery et al. 2022, appendix B): model FLOPs exclude recomputation.
A forward's FLOPs are counted with torch.utils.flop_counter on the real model (matmuls,
convs, sdpa; causal attention counted as full). Full FT: 3x forward. LoRA: the frozen
vision tower runs forward only and the language model forward + input-gradient backward
(2x), adapter FLOPs neglected.

Run from the repository root: ``python bench/gpu.py --out bench/results/gpu.md`` (writes
gpu.md and gpu.json); ``python bench/gpu.py --quick`` is a CPU smoke run on tiny configs.
Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Before torch's first CUDA allocation: cases of different sizes follow each other in one
# process, and expandable segments keep fragmentation from turning into false OOMs.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
SPAN_FILE = REPO / "services" / "magnifier" / "sr" / "archs" / "span.py"
GIB = 2**30
# Dense (no 2:4 sparsity) bf16/fp16 tensor-core peaks, TFLOP/s. NVIDIA's H100 SXM and H200
# datasheets give 1,979 "with sparsity"; dense is half. A100: 312. By device-name substring.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
PATCH, MERGE, TEMPORAL = 14, 2, 2  # Qwen2.5-VL vision: 14 px patches, 2x2 merge, 2 frames
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
# Every linear of the language model, not the vision tower (which has same-named layers).
LORA_TARGETS = (
    r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\."
    r"(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


@dataclass(frozen=True)
class Size:
    """A Qwen2.5-VL size: text-config overrides, vision config, and the special token ids."""

    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    tie_word_embeddings: bool
    # image, video, vision_start, vision_end: the real ids (151655...) or tiny ones.
    token_ids: tuple[int, int, int, int] = (151655, 151656, 151652, 151653)
    plain_vocab: int = 151643  # ids below this are ordinary text tokens

    def config(self) -> Any:
        from transformers import Qwen2_5_VLConfig

        image, video, start, end = self.token_ids
        return Qwen2_5_VLConfig(
            text_config=self.text,
            vision_config=self.vision,
            tie_word_embeddings=self.tie_word_embeddings,
            image_token_id=image,
            video_token_id=video,
            vision_start_token_id=start,
            vision_end_token_id=end,
        )


def _text(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, **kw: Any):
    head_dim = hidden // heads
    # M-RoPE splits head_dim / 2 rotary pairs over (t, h, w); the real models use 16/24/24.
    mrope = [16, 24, 24] if head_dim == 128 else [2, 3, 3]
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}
    return {
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": rope,
        **kw,
    }


def _vision(
    out_hidden: int,
    depth: int = 32,
    hidden: int = 1280,
    inter: int = 3420,
    heads: int = 16,
    full: tuple[int, ...] = (7, 15, 23, 31),
) -> dict[str, Any]:
    return {
        "depth": depth,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_heads": heads,
        "out_hidden_size": out_hidden,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": TEMPORAL,
        "window_size": 112,
        "fullatt_block_indexes": list(full),
        "tokens_per_second": 2,
    }


# Text sizes from the checkpoints' config.json (huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct and
# -7B-Instruct, blob/main/config.json; read through verbatim copies such as
# unsloth/Qwen2.5-VL-7B-Instruct): 3B hidden 2048, intermediate 11008, 36 layers, 16 heads,
# 2 KV heads, vocab 151936, tied embeddings; 7B 3584 / 18944 / 28 / 28 / 4, vocab 152064,
# untied; both rope_theta 1e6, mrope_section [16, 24, 24]. Their vision_config sets only
# hidden_size 1280 (and out_hidden_size 2048 for 3B); the rest are the defaults of
# transformers' Qwen2_5_VLVisionConfig (configuration_qwen2_5_vl.py): depth 32, intermediate
# 3420, 16 heads, window 112, full attention in blocks 7/15/23/31. Built on the meta device
# these give 3.75B and 8.29B parameters, the checkpoints' published counts.
SIZES = {
    "3b": Size("3b", _text(2048, 11008, 36, 16, 2, 151936), _vision(2048), True),
    "7b": Size("7b", _text(3584, 18944, 28, 28, 4, 152064), _vision(3584), False),
    "tiny": Size(
        "tiny",
        _text(64, 128, 2, 4, 2, 512, bos_token_id=1, eos_token_id=2),
        _vision(64, depth=2, hidden=32, inter=64, heads=2, full=(1,)),
        True,
        token_ids=(500, 501, 502, 503),
        plain_vocab=500,
    ),
}


@dataclass
class Bench:
    """Run-wide settings and state: device, time budget, the baseline matmul rate."""

    device: torch.device
    budget_s: float
    peak_tflops: float | None
    start: float = field(default_factory=time.perf_counter)
    matmul_tflops: float | None = None  # measured bf16 matmul, the same-machine reference
    forward_flops: dict[str, tuple[float, float]] = field(default_factory=dict)
    span_gflop: float | None = None  # SPAN FLOPs per image at the run's input size

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any], min_s: float, warmup: int = 2) -> float:
        """Seconds per call of ``fn``: after ``warmup`` calls, at least 3 calls and ``min_s``."""
        for _ in range(warmup):
            fn()
        self.sync()
        calls, t0 = 0, time.perf_counter()
        # No sync per call: the launch queue's depth bounds how far the loop runs ahead, and
        # the final sync charges all queued work to the measured calls.
        while calls < 3 or time.perf_counter() - t0 < min_s:
            fn()
            calls += 1
        self.sync()
        return (time.perf_counter() - t0) / calls

    def mfu(self, tflops: float) -> dict[str, float | None]:
        peak, ref = self.peak_tflops, self.matmul_tflops
        return {
            "mfu": tflops / peak if peak else None,
            "vs_matmul": tflops / ref if ref else None,
        }

    def guarded(self, ident: dict[str, Any], fn: Callable[[], list[dict]]) -> list[dict]:
        """Rows from ``fn``, or one row saying why not (OOM, error, time budget spent)."""
        if time.perf_counter() - self.start > self.budget_s:
            return [{**ident, "status": "skipped", "note": f"time budget {self.budget_s:.0f} s"}]
        print(f"[gpu-bench] {ident}", file=sys.stderr, flush=True)
        try:
            rows = fn()
        except torch.OutOfMemoryError as exc:
            rows = [{**ident, "status": "oom", "note": str(exc).splitlines()[0][:160]}]
        except Exception as exc:  # one broken case must not cost the others their figures
            traceback.print_exc()
            line = (str(exc).splitlines() or [""])[0][:160]
            rows = [{**ident, "status": "error", "note": f"{type(exc).__name__}: {line}"}]
        # After the except block, so its traceback (and the tensors its frames hold) is gone.
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return rows


# ---- baseline ---------------------------------------------------------------------------
def baseline_rows(bench: Bench, n: int, copy_bytes: int, min_s: float) -> list[dict]:
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        a = torch.randn(n, n, device=bench.device, dtype=dtype)
        b = torch.randn(n, n, device=bench.device, dtype=dtype)
        seconds = bench.timed(lambda a=a, b=b: a @ b, min_s)
        tflops = 2 * n**3 / seconds / 1e12
        if dtype is torch.bfloat16:
            bench.matmul_tflops = tflops
        peak = bench.peak_tflops
        rows.append(
            {
                "kernel": f"{str(dtype)[6:]} matmul {n}³",
                "rate": f"{tflops:.1f} TFLOP/s",
                "of_peak": tflops / peak if peak else None,
                "status": "ok",
            }
        )
    src = torch.empty(copy_bytes // 4, device=bench.device)
    dst = torch.empty_like(src)
    seconds = bench.timed(lambda: dst.copy_(src), min_s)
    rate = 2 * copy_bytes / seconds / 1e9  # read + write
    rows.append(
        {
            "kernel": f"device copy {copy_bytes / GIB:.2f} GiB",
            "rate": f"{rate:.0f} GB/s",
            "of_peak": None,
            "status": "ok",
        }
    )
    return rows


# ---- magnifier: SPAN x4 -----------------------------------------------------------------
def load_span() -> type[nn.Module]:
    """magsrl's SPAN class, by file path: the GPU machine has no magsrl installed."""
    spec = importlib.util.spec_from_file_location("bench_gpu_span", SPAN_FILE)
    assert spec is not None and spec.loader is not None, SPAN_FILE
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SPAN


def conv_flops_per_pixel(net: nn.Module) -> int:
    """FLOPs per input pixel: every conv of SPAN is stride 1 at the input resolution (the x4
    comes from PixelShuffle), so each costs 2 * weight.numel() per pixel; elementwise ops
    (SiLU, sigmoid, adds) are not counted."""
    return sum(2 * m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))


def span_rows(bench: Bench, px: int, batches: list[int], min_s: float) -> list[dict]:
    # fp16 as the magnifier serves on GPU; fp32 on CPU, where fp16 convs are emulated.
    dtype = torch.float16 if bench.device.type == "cuda" else torch.float32
    net = load_span()(feature_channels=48, upscale=4).eval().to(bench.device, dtype)
    bench.span_gflop = conv_flops_per_pixel(net) * px * px / 1e9
    rows = []
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        net = net.to(memory_format=fmt)
        for batch in batches:
            ident = {"batch": batch, "layout": layout, "input": f"{px}² → {4 * px}²"}
            case = SpanCase(bench, net, batch, px, dtype, fmt, min_s)
            rows += [{**ident, **row} for row in bench.guarded(ident, case.run)]
    return rows


@dataclass
class SpanCase:
    """One SPAN throughput measurement: ``batch`` random ``px``² inputs, inference mode."""

    bench: Bench
    net: nn.Module
    batch: int
    px: int
    dtype: torch.dtype
    fmt: torch.memory_format
    min_s: float

    def run(self) -> list[dict]:
        x = torch.rand(self.batch, 3, self.px, self.px, device=self.bench.device, dtype=self.dtype)
        x = x.contiguous(memory_format=self.fmt)
        with torch.inference_mode():
            seconds = self.bench.timed(lambda: self.net(x), self.min_s, warmup=3)
        tflops = conv_flops_per_pixel(self.net) * self.px**2 * self.batch / seconds / 1e12
        images_s = self.batch / seconds
        row = {"ms": seconds * 1e3, "images_s": images_s, "tflops": tflops, "status": "ok"}
        return [{**row, **self.bench.mfu(tflops)}]


# ---- learner step -----------------------------------------------------------------------
def make_batch(
    size: Size, batch: int, image_px: int, prompt: int, completion: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """``batch`` sequences ``prompt, <vision_start>, image tokens, <vision_end>, completion``
    with random text ids and a random image of ``image_px``² (a multiple of 28)."""
    if image_px % (PATCH * MERGE):
        raise ValueError(f"--image-px {image_px} must be a multiple of {PATCH * MERGE}")
    side = image_px // PATCH  # patches per side
    n_image = side * side // MERGE**2  # tokens after the 2x2 merge
    image, _, start, end = size.token_ids
    gen = torch.Generator().manual_seed(0)

    def fill(value: int, n: int) -> torch.Tensor:
        return torch.full((batch, n), value, dtype=torch.long)

    ids = torch.cat(
        [
            torch.randint(0, size.plain_vocab, (batch, prompt), generator=gen),
            fill(start, 1),
            fill(image, n_image),
            fill(end, 1),
            torch.randint(0, size.plain_vocab, (batch, completion), generator=gen),
        ],
        dim=1,
    )
    tensors = {
        "input_ids": ids,  # (B, T)
        "attention_mask": torch.ones_like(ids),
        # 1 on image placeholders: without it Qwen2.5-VL falls back to 1-D positions.
        "mm_token_type_ids": (ids == image).long(),
        "pixel_values": torch.randn(batch * side * side, 3 * TEMPORAL * PATCH**2, generator=gen),
        "image_grid_thw": torch.tensor([[1, side, side]] * batch),
    }
    return {k: v.to(device) for k, v in tensors.items()}


def build_model(size: Size, dtype: torch.dtype, device: torch.device) -> nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device(device):  # initialise straight on the device: 8B params on CPU is slow
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            size.config(), dtype=dtype, attn_implementation="sdpa"
        )
    model.to(device)  # a no-op unless some transformers version ignores the device context
    for param in model.parameters():  # parameters only: rotary inv_freq buffers stay fp32
        param.data = param.data.to(dtype)
    model.config.use_cache = False
    # transformers 5.24 renamed it; the GPU machine's 5.17 has only the old name.
    enable = getattr(model, "activation_checkpointing_enable", None)
    enable = enable or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})  # first parameter of both
    return model.train()


def count_forward_flops(model: nn.Module, inputs: dict, keep: int) -> tuple[float, float]:
    """(whole forward, vision tower alone) FLOPs of one no-grad bf16 forward."""
    with torch.no_grad(), torch.autocast(inputs["input_ids"].device.type, torch.bfloat16):
        with FlopCounterMode(display=False) as whole:
            model(**inputs, use_cache=False, logits_to_keep=keep)
        with FlopCounterMode(display=False) as vision:
            model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    return float(whole.get_total_flops()), float(vision.get_total_flops())


def train_rows(bench: Bench, size: Size, mode: str, args: argparse.Namespace) -> list[dict]:
    device = bench.device
    full = mode == "full"
    t0 = time.perf_counter()
    model = build_model(size, torch.float32 if full else torch.bfloat16, device)
    bench.sync()
    build_s = time.perf_counter() - t0
    inputs = make_batch(
        size, args.batch, args.image_px, args.prompt_tokens, args.completion_tokens, device
    )
    keep = args.completion_tokens + 1  # logits from the last prompt position on
    if size.name not in bench.forward_flops:
        bench.forward_flops[size.name] = count_forward_flops(model, inputs, keep)
    whole, vision = bench.forward_flops[size.name]
    step_flops = 3 * whole if full else 2 * (whole - vision) + vision
    if not full:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(**LORA, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    targets = inputs["input_ids"][:, -args.completion_tokens :]  # (B, C)

    def step() -> float:
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, cache_enabled=not full):
            out = model(**inputs, use_cache=False, logits_to_keep=keep)
        logits = out.logits[:, :-1].float()  # (B, C, V): position t predicts token t + 1
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        bench.sync()
        return time.perf_counter() - t

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s = step()  # allocator growth, cuDNN/cuBLAS heuristics: excluded
    times = [step() for _ in range(args.steps)]
    seconds = statistics.median(times)
    tokens = inputs["input_ids"].numel()
    tflops = step_flops / seconds / 1e12
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(device) / GIB if cuda else None
    reserved = torch.cuda.max_memory_reserved(device) / GIB if cuda else None
    return [
        {
            "model": size.name,
            "mode": mode,
            "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
            "trainable_m": sum(p.numel() for p in params) / 1e6,
            "tokens": tokens,
            "build_s": build_s,
            "warmup_s": warmup_s,
            "step_s": seconds,
            "steps_s": times,
            "tokens_s": tokens / seconds,
            "peak_gib": peak,
            "peak_reserved_gib": reserved,
            "step_tflop": step_flops / 1e12,
            "tflops": tflops,
            **bench.mfu(tflops),
            "status": "ok",
        }
    ]


# ---- report -----------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    if spec == "%":
        return f"{100 * value:.1f}%"
    return format(value, spec) if spec else str(value)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; a row that did not run shows its status and note in the first columns."""
    lines = [
        "| " + " | ".join(h for h, _, _ in columns) + " | status |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        cells = [_fmt(row.get(key), spec) if key in row else "" for _, key, spec in columns]
        note = str(row.get("note") or "").replace("|", "\\|")  # keep the table's columns
        status = row["status"] + (f": {note}" if note else "")
        lines.append("| " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines)


def machine(bench: Bench) -> dict[str, Any]:
    import peft
    import transformers

    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": "cpu",
        "peak_tflops": bench.peak_tflops,
    }
    if bench.device.type == "cuda":
        props = torch.cuda.get_device_properties(bench.device)
        info["device"] = f"{props.name}, {props.total_memory / GIB:.0f} GiB"
    return info


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    peak = f"{m['peak_tflops']} TFLOP/s dense bf16" if m["peak_tflops"] else "unknown"
    head = (
        f"Run of {m['date_utc']} UTC on {m['device']} ({m['host']}); torch {m['torch']} "
        f"(CUDA {m['cuda']}), transformers {m['transformers']}, peft {m['peft']}. Peak used "
        f"for MFU: {peak}. Total wall time {report['wall_s']:.0f} s.\n\n"
        f"Learner step: {s['batch']} sequence(s) of {s['prompt_tokens']} prompt + "
        f"{s['image_px']}² image + {s['completion_tokens']} completion tokens, median of "
        f"{s['steps']} steps after 1 warm-up step."
    )
    train = table(
        report["train"],
        [
            ("model", "model", ""),
            ("mode", "mode", ""),
            ("params (B)", "params_b", ".3g"),
            ("trainable (M)", "trainable_m", ".1f"),
            ("tokens/step", "tokens", "d"),
            ("step s", "step_s", ".3f"),
            ("tokens/s", "tokens_s", ",.0f"),
            ("peak GiB", "peak_gib", ".1f"),
            ("model TFLOP/step", "step_tflop", ".3g"),
            ("TFLOP/s", "tflops", ".1f"),
            ("MFU", "mfu", "%"),
            ("vs bf16 matmul", "vs_matmul", "%"),
        ],
    )
    span = table(
        report["span"],
        [
            ("batch", "batch", "d"),
            ("layout", "layout", ""),
            ("input", "input", ""),
            ("ms/batch", "ms", ".2f"),
            ("images/s", "images_s", ",.1f"),
            ("TFLOP/s", "tflops", ".2f"),
            ("of bf16 roofline", "mfu", "%"),
            ("vs bf16 matmul", "vs_matmul", "%"),
        ],
    )
    base = table(
        report["baseline"],
        [("kernel", "kernel", ""), ("rate", "rate", ""), ("of peak", "of_peak", "%")],
    )
    gflop = report["span_gflop_per_image"] or 0.0
    span_note = (
        f"SPAN x4 ch48, random weights, {report['span_dtype']}, inference mode "
        f"({gflop:.2f} GFLOP per image, convolutions only):"
    )
    return (
        "\n\n".join([head, "Baseline, same run:", base, "Learner step:", train, span_note, span])
        + "\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny configs, CPU allowed (smoke run)")
    p.add_argument("--sizes", default="3b,7b", help="comma list of 3b, 7b (tiny with --quick)")
    p.add_argument("--modes", default="lora,full", help="comma list of lora, full")
    p.add_argument("--batch", type=int, default=2, help="sequences per learner step")
    p.add_argument("--image-px", type=int, default=1008, help="image side, multiple of 28")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--completion-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up one")
    p.add_argument("--span-px", type=int, default=256, help="SPAN input side")
    p.add_argument("--span-batches", default="1,8,32")
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--budget-s", type=float, default=420, help="start no case after this")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak; default by GPU name")
    p.add_argument("--out", type=Path, help="write Markdown here and JSON beside it (.json)")
    args = p.parse_args(argv)
    for name in args.sizes.split(","):
        if name not in SIZES:
            p.error(f"--sizes: unknown size {name!r}; choose from {', '.join(SIZES)}")
    for mode in args.modes.split(","):
        if mode not in ("lora", "full"):
            p.error(f"--modes: unknown mode {mode!r}; choose lora, full")
    if args.quick:  # seconds on CPU: tiny model, tiny image, tiny kernels
        args.sizes, args.batch, args.image_px, args.prompt_tokens = "tiny", 1, 112, 8
        args.completion_tokens, args.steps, args.span_px = 16, 2, 32
        args.span_batches, args.matmul_n, args.budget_s = "1,2", 256, 60.0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.quick:
        sys.exit("no CUDA device: the real sizes need a GPU; use --quick for a CPU smoke run")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    torch.backends.cudnn.benchmark = True
    bench = Bench(device, args.budget_s, peak)
    min_s = 0.05 if args.quick else 1.0
    copy_bytes = 2**24 if args.quick else 2**31
    baseline = bench.guarded(
        {"kernel": "baseline"}, lambda: baseline_rows(bench, args.matmul_n, copy_bytes, min_s)
    )
    batches = [int(b) for b in args.span_batches.split(",")]
    span = bench.guarded({"layout": "any"}, lambda: span_rows(bench, args.span_px, batches, min_s))
    train: list[dict] = []
    for name in args.sizes.split(","):
        for mode in args.modes.split(","):
            ident = {"model": name, "mode": mode}
            train += bench.guarded(
                ident, lambda n=name, m=mode: train_rows(bench, SIZES[n], m, args)
            )
    report = {
        "machine": machine(bench),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": time.perf_counter() - bench.start,
        "span_dtype": "fp16" if device.type == "cuda" else "fp32",
        "span_gflop_per_image": bench.span_gflop,
        "forward_flops": bench.forward_flops,
        "baseline": baseline,
        "span": span,
        "train": train,
    }
    text = markdown(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
