"""Policy CPU per round-2 request (issue 15): a 3.5 MP JPEG original plus two JPEG crops,
sent to the policy's chat API and on to an upstream engine (the vLLM-faithful fake,
tests/fakes/vllm_server.py, a real process), against the old path in the same run.

- ``old``: every image decoded, EXIF-turned and re-encoded as PNG at Pillow's default level
  for the upstream (the policy before issue 15; its ``_data_url`` is copied below).
- ``new``: JPEG and PNG bytes forwarded as received, only the header read.

Both run in this process with the policy's own ChatService and openai engine, so the figure
is the CPU time of this process per request (all threads; the upstream is another process).
A third row sends the same request to a real policy process (``magsrl serve policy`` with
``MAGSRL_ENGINE=openai``) and reads that process's CPU time: what a deployment pays, HTTP
and request validation included.

Run: ``.venv/bin/python bench/policy_io.py [--iters N]``; figures go to
bench/results/policy_io.json and docs/benchmarks.md ("Policy image path").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fakes: the fake upstream

from magsrl.cli.supervisor import Supervisor, free_port  # noqa: E402
from magsrl.common.images import to_b64  # noqa: E402
from magsrl.engines import wire_images  # noqa: E402
from magsrl.engines.openai_upstream import OpenAIEngine  # noqa: E402
from magsrl.models.tiny import ensure_tiny_model  # noqa: E402
from magsrl.policy.config import PolicySettings  # noqa: E402
from magsrl.policy.protocol import ChatCompletionRequest  # noqa: E402
from magsrl.policy.serving_chat import ChatService  # noqa: E402
from tests.fakes.process import start_fake_vllm  # noqa: E402

ORIGINAL = (2160, 1620)  # 3.5 MP
CROP = (512, 512)  # the zoom loop's default crop budget (proto/episode.py)
RESULTS = REPO / "bench" / "results" / "policy_io.json"


def photo(size: tuple[int, int], quality: int) -> bytes:
    """A photo (scikit-image's coffee) resized to ``size``, as JPEG."""
    import skimage.data

    image = Image.fromarray(skimage.data.coffee()).resize(size, Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def url(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def round2_body(model: str, original: bytes, crops: list[bytes]) -> dict[str, Any]:
    """A round-2 request as the zoom loop sends it: the original and the question, the
    model's round-1 turn with its tool call, and the crops in the tool message."""
    call = {"name": "zoom", "arguments": json.dumps({"bbox_2d": [10, 20, 300, 400]})}
    tool_content = [{"type": "text", "text": "Region 1:"}] + [
        {"type": "image_url", "image_url": {"url": url(c)}} for c in crops
    ]
    return {
        "model": model,
        "max_tokens": 2,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url(original)}},
                    {"type": "text", "text": "What is printed on the cup?"},
                ],
            },
            {
                "role": "assistant",
                "content": "The print is too small.",
                "tool_calls": [{"id": "call_0", "type": "function", "function": call}],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": tool_content},
        ],
    }


def old_png_data_url(image: Image.Image) -> str:
    """The policy's ``_data_url`` before issue 15: PNG at Pillow's default level."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + to_b64(buf.getvalue())


async def in_process(
    upstream: str, model: str, body: dict[str, Any], iters: int, old: bool
) -> list[float]:
    """CPU ms of this process per request through ChatService and the openai engine."""
    settings = PolicySettings(engine="openai", upstream_url=upstream, policy_model=model)
    engine = OpenAIEngine(settings.engine_settings())
    chat = ChatService(engine, settings)
    saved = wire_images.png_data_url
    if old:
        chat.pass_bytes = False  # decode every image, as before
        wire_images.png_data_url = old_png_data_url
    try:
        problem = await engine.ready()
        assert problem is None, problem
        request = ChatCompletionRequest.model_validate(body)
        out = []
        for i in range(iters + 2):
            start = time.process_time()
            await chat.create(request)
            if i >= 2:  # two warm-up requests
                out.append((time.process_time() - start) * 1000)
        return out
    finally:
        wire_images.png_data_url = saved
        await engine.close()


def through_process(upstream: str, model: str, body: dict[str, Any], iters: int) -> list[float]:
    """CPU ms of a real policy process per request (its HTTP and validation included),
    as means over batches of 4 requests."""
    tmp = Path(tempfile.mkdtemp(prefix="magsrl-bench-policy-io-"))
    supervisor = Supervisor(tmp / "logs")
    service = supervisor.add_magsrl_service(
        "policy",
        free_port(),
        env={
            "MAGSRL_ENGINE": "openai",
            "MAGSRL_UPSTREAM_URL": upstream,
            "MAGSRL_POLICY_MODEL": model,
            "OMP_NUM_THREADS": "1",
        },
    )
    supervisor.start()
    try:
        supervisor.wait_ready(120)
        assert service.proc is not None
        proc = psutil.Process(service.proc.pid)

        def cpu_s() -> float:
            procs = [proc, *proc.children(recursive=True)]
            return sum(p.cpu_times().user + p.cpu_times().system for p in procs)

        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        out = []
        with httpx.Client(base_url=service.url, timeout=120) as client:
            for _ in range(2):  # warm-up
                client.post("/v1/chat/completions", content=payload, headers=headers)
            # The kernel counts a process's CPU in 10 ms ticks: read it over batches of
            # requests, not one, and report the mean per request of each batch.
            batch = 4
            for _ in range(max(1, iters // batch)):
                before = cpu_s()
                for _ in range(batch):
                    resp = client.post("/v1/chat/completions", content=payload, headers=headers)
                    resp.raise_for_status()
                out.append((cpu_s() - before) * 1000 / batch)
        return out
    finally:
        supervisor.stop()


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 1),
        "mean_ms": round(statistics.fmean(values), 1),
        "min_ms": round(min(values), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = str(ensure_tiny_model())
    original = photo(ORIGINAL, 90)
    crops = [photo(CROP, 95), photo((480, 540), 95)]
    body = round2_body(model, original, crops)
    tmp = Path(tempfile.mkdtemp(prefix="magsrl-bench-fake-"))
    fake = start_fake_vllm(Path(model), tmp, "--logprobs-mode", "processed_logprobs")
    upstream = f"{fake.url}/v1"
    try:
        old = asyncio.run(in_process(upstream, model, body, args.iters, old=True))
        new = asyncio.run(in_process(upstream, model, body, args.iters, old=False))
        served = through_process(upstream, model, body, args.iters)
    finally:
        fake.stop()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "request": f"round 2: {ORIGINAL[0]}x{ORIGINAL[1]} JPEG q90 ({len(original)} B) + "
        f"crops {[len(c) for c in crops]} B (JPEG q95)",
        "iters": args.iters,
        "old_reencode_in_process": summary(old),
        "new_passthrough_in_process": summary(new),
        "new_policy_process": summary(served),
        "speedup_p50": round(statistics.median(old) / statistics.median(new), 1),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
