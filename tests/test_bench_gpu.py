"""bench/gpu.py on CPU: it must run standalone (no magsrl, no network, no CUDA) on the GPU
machine, so its smoke run, its FLOP counts and its model sizes are checked here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_span_flops_formula_matches_flop_counter(gpu: ModuleType) -> None:
    """Pins a SPAN FLOP formula that misses a conv or counts convs at the x4 output size:
    the roofline percentages would be off by that much."""
    net = gpu.load_span()(feature_channels=48, upscale=4).eval()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        assert net(x).shape == (1, 3, 64, 96)
    assert gpu.conv_flops_per_pixel(net) * 16 * 24 == counter.get_total_flops()


@pytest.mark.slow
def test_real_sizes_have_the_checkpoints_parameter_counts(gpu: ModuleType) -> None:
    """Pins a mistyped width, depth or vocabulary in the 3B/7B configs: built on the meta
    device they must hold the published 3.75B and 8.29B parameters (tied head on 3B only)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    for name, billions in (("3b", 3.75), ("7b", 8.29)):
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(gpu.SIZES[name].config())
        total = sum(p.numel() for p in model.parameters()) / 1e9
        assert round(total, 2) == billions, (name, total)


@pytest.mark.slow
def test_batch_gets_3d_image_positions(gpu: ModuleType) -> None:
    """Pins a batch without mm_token_type_ids: Qwen2.5-VL then silently uses 1-D positions.
    With them, a 4x4-token image spans 4 positions, so rope_deltas is 4 - 16 = -12."""
    size = gpu.SIZES["tiny"]
    model = gpu.build_model(size, torch.float32, torch.device("cpu")).eval()
    inputs = gpu.make_batch(size, 2, 112, 3, 5, torch.device("cpu"))
    assert int(inputs["mm_token_type_ids"].sum()) == 2 * 16
    with torch.no_grad():
        model(**inputs, use_cache=False)
    assert model.model.rope_deltas.flatten().tolist() == [-12, -12]


@pytest.mark.slow
def test_quick_run_is_standalone_and_reports_every_case(tmp_path: Path) -> None:
    """Pins the script needing magsrl (absent on the GPU machine) or a case silently
    missing from its report: a shadow `magsrl` package that raises on import comes first
    on the path, and every case of the quick run must end `ok` in both outputs."""
    shadow = tmp_path / "shadow" / "magsrl"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('bench/gpu.py imported magsrl')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent), "OMP_NUM_THREADS": "1"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run never needs CUDA, even where it exists
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["baseline"] + report["span"] + report["train"]
    assert [r["status"] for r in rows] == ["ok"] * len(rows), rows
    assert {(r["model"], r["mode"]) for r in report["train"]} == {
        ("tiny", "lora"),
        ("tiny", "full"),
    }
    assert len(report["span"]) == 4  # 2 layouts x batches 1, 2
    assert all(r["step_s"] > 0 and r["step_tflop"] > 0 for r in report["train"])
    text = out.read_text()
    assert "| tiny | lora |" in text and "| tiny | full |" in text
    assert "| 2 | channels_last |" in text
