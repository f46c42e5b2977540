"""Policy benchmark: the overhead of ``/answer`` (wall time minus engine time minus magnifier
time) on the tiny model and a 2048x1536 photo, and the bytes sent to the magnifier per request.

The tiny model is first taught a scripted zoom trajectory (magsrl.policy.scripted), so every
request really runs both rounds and one zoom. Baseline in the same run: decoding the same
JPEG with PIL in-process, a floor for any server that must look at the pixels.

Run: ``make bench`` or ``.venv/bin/python bench/policy.py [--iters N]``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from magsrl.cli.supervisor import Supervisor, free_port
from magsrl.magnifier.config import MagnifierSettings
from magsrl.magnifier.sr.weights import prepare_weights
from magsrl.models.tiny import ensure_tiny_model
from magsrl.policy.scripted import Script, build_scripted_model

SIZE = (2048, 1536)
QUESTION = "What is printed on the cup?"
ROUND1 = "<think>The print is too small.<zoom>[[80, 60, 140, 110]]</zoom></think>"
ROUND2 = "<rethink>Now it is readable.</rethink><answer>coffee</answer>"
RESULTS = Path(__file__).parent / "results" / "policy.json"
SFT_STEPS = 200


def photo_jpeg() -> bytes:
    import skimage.data

    image = Image.fromarray(skimage.data.coffee()).resize(SIZE, Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def counter(metrics: str, name: str, endpoint: str) -> float:
    match = re.search(rf'{name}\{{endpoint="{re.escape(endpoint)}"\}} ([0-9.e+]+)', metrics)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()

    weights = MagnifierSettings().weights_dir
    prepare_weights(weights, names=["span-x4"])
    jpeg = photo_jpeg()
    decode_ms = []
    for _ in range(10):
        start = time.perf_counter()
        Image.open(io.BytesIO(jpeg)).convert("RGB").load()
        decode_ms.append((time.perf_counter() - start) * 1000)

    tmp = Path(tempfile.mkdtemp(prefix="magsrl-bench-policy-"))
    supervisor = Supervisor(tmp / "logs")
    magnifier = supervisor.add_magsrl_service(
        "magnifier", free_port(), env={"MAGSRL_WEIGHTS_DIR": str(weights)}
    )
    supervisor.start()
    try:
        supervisor.wait_ready(120)
        model = tmp / "model"
        build_scripted_model(
            ensure_tiny_model(),
            model,
            magnifier.url,
            Script(jpeg, QUESTION, ROUND1, ROUND2),
            steps=SFT_STEPS,
        )
        policy = Supervisor(tmp / "logs-policy")
        service = policy.add_magsrl_service(
            "policy",
            free_port(),
            env={"MAGSRL_POLICY_MODEL": str(model), "MAGSRL_MAGNIFIER_URL": magnifier.url},
        )
        policy.start()
        supervisor.services.extend(policy.services)
        policy.wait_ready(120)
        client = httpx.Client(base_url=service.url, timeout=120)
        body = {"image": {"b64": base64.b64encode(jpeg).decode()}, "question": QUESTION}
        for _ in range(3):
            client.post("/answer", json=body).raise_for_status()
        before = client.get("/metrics").text
        rows = []
        for _ in range(args.iters):
            start = time.perf_counter()
            resp = client.post("/answer", json=body)
            wall = (time.perf_counter() - start) * 1000
            resp.raise_for_status()
            out = resp.json()
            assert out["answer"] == "coffee" and out["rounds"][0]["zooms"], out
            rows.append({**out["timing_ms"], "client_wall": wall})
        after = client.get("/metrics").text
    finally:
        supervisor.stop()

    def per_request(name: str, endpoint: str) -> float:
        return (counter(after, name, endpoint) - counter(before, name, endpoint)) / args.iters

    overhead = [r["overhead"] for r in rows]
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "iters": args.iters,
        "image": f"{SIZE[0]}x{SIZE[1]} JPEG, {len(jpeg)} bytes",
        "overhead_p50_ms": pct(overhead, 50),
        "overhead_p95_ms": pct(overhead, 95),
        "total_p50_ms": pct([r["total"] for r in rows], 50),
        "model_p50_ms": pct([r["model"] for r in rows], 50),
        "magnifier_p50_ms": pct([r["magnifier"] for r in rows], 50),
        "client_wall_p50_ms": pct([r["client_wall"] for r in rows], 50),
        "baseline_pil_decode_p50_ms": pct(decode_ms, 50),
        "uploads_per_request": per_request("magsrl_magnifier_client_requests_total", "/v1/images"),
        "upload_bytes_per_request": per_request(
            "magsrl_magnifier_client_bytes_sent_total", "/v1/images"
        ),
        "zoom_bytes_per_request": per_request(
            "magsrl_magnifier_client_bytes_sent_total", "/v1/zoom"
        ),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
