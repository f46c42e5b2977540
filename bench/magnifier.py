"""Magnifier benchmark: latency of bicubic, SPAN and Real-ESRGAN crops over real HTTP against
the bare torch forward of the same network on the same crop, throughput with 1 and 8
concurrent clients, and the server's peak RSS at rest and under load.

Run: ``make bench`` or ``.venv/bin/python bench/magnifier.py [--iters N]``.
Results print as Markdown and are written to bench/results/magnifier.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

from magsrl.cli.supervisor import Supervisor, free_port
from magsrl.common.images import encode_image
from magsrl.magnifier.config import MagnifierSettings
from magsrl.magnifier.sr.weights import build_network, prepare_weights

SIZES = ((128, 512), (256, 1024))  # (crop side, output side)
RESULTS = Path(__file__).parent / "results" / "magnifier.json"
JPEG_QUALITY = 95
METHODS = ("bicubic", "span-x4", "realesrgan-x4plus")
SLOW_METHOD, SLOW_MAX_SIDE = "realesrgan-x4plus", 128  # seconds a call on 2 CPU cores


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed(fn, iters: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def test_image() -> np.ndarray:
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.hubble_deep_field()).resize((1024, 1024)))


def bare_forward(name: str, weights: Path, side: int, iters: int) -> list[float]:
    net = build_network(name, weights).eval()
    x = torch.from_numpy(test_image()[:side, :side].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        return timed(lambda: net(x).clamp_(0, 1), iters)


def bare_bicubic(side: int, out: int, iters: int) -> list[float]:
    image = Image.fromarray(test_image()[:side, :side])
    return timed(lambda: image.resize((out, out), Image.BICUBIC), iters)


def bare_in_subprocess(method: str, weights: Path, side: int, out: int, iters: int) -> list[float]:
    # A separate process, run while the server idles: OpenMP threads left spinning in this
    # process after a forward would otherwise steal the server's cores and skew the ratio.
    cmd = [
        sys.executable,
        __file__,
        "--bare",
        method,
        str(weights),
        str(side),
        str(out),
        str(iters),
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def bare_main(method: str, weights: str, side: str, out: str, iters: str) -> None:
    if method == "bicubic":
        times = bare_bicubic(int(side), int(out), int(iters))
    else:
        times = bare_forward(method, Path(weights), int(side), int(iters))
    print(json.dumps(times))


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        bare_main(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rrdb-iters", type=int, default=3, help="Real-ESRGAN is slow on CPU")
    parser.add_argument("--load-seconds", type=float, default=15.0)
    args = parser.parse_args()

    settings = MagnifierSettings()
    prepare_weights(settings.weights_dir, names=["span-x4", "realesrgan-x4plus"])
    # Phase 1, before the server starts: bare baselines, each in a fresh process, so
    # nothing else competes for the two cores.
    cases = [
        (side, out, method)
        for side, out in SIZES
        for method in METHODS
        if not (method == SLOW_METHOD and side > SLOW_MAX_SIDE)
    ]
    bares = {}
    for side, out, method in cases:
        iters = args.rrdb_iters if method == SLOW_METHOD else args.iters
        bares[(side, out, method)] = bare_in_subprocess(
            method, settings.weights_dir, side, out, iters
        )
        print(
            f"bare {method} {side}->{out}: p50 {percentile(bares[(side, out, method)], 50):.1f} ms",
            file=sys.stderr,
        )
    tmp = Path(tempfile.mkdtemp(prefix="magsrl-bench-"))
    supervisor = Supervisor(tmp / "logs")
    port = free_port()
    service = supervisor.add_magsrl_service(
        "magnifier",
        port,
        env={
            "MAGSRL_PRELOAD": "span-x4,realesrgan-x4plus",
            "MAGSRL_WEIGHTS_DIR": str(settings.weights_dir),
        },
    )
    supervisor.start()
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "iters": args.iters,
    }
    try:
        supervisor.wait_ready(300)
        assert service.proc is not None
        server = psutil.Process(service.proc.pid)
        time.sleep(1.0)
        results["rss_at_rest_mb"] = server.memory_info().rss / 2**20

        client = httpx.Client(base_url=service.url, timeout=120)
        data = encode_image(Image.fromarray(test_image()), "png")
        image_id = client.post(
            "/v1/images", content=data, headers={"Content-Type": "image/png"}
        ).json()["image_id"]

        def http_zoom(side: int, out: int, method: str, fmt: str) -> None:
            body = {
                "image": {"id": image_id},
                "boxes": [[0, 0, side, side]],
                "method": method,
                "max_pixels": out * out,
                "format": fmt,
                "quality": JPEG_QUALITY,
            }
            client.post("/v1/zoom", json=body).raise_for_status()

        rows = []
        for side, out, method in cases:
            slow = method == SLOW_METHOD
            bare = bares[(side, out, method)]
            for fmt in ("png",) if slow else ("png", "jpeg"):
                e2e = timed(
                    lambda s=side, o=out, m=method, f=fmt: http_zoom(s, o, m, f),
                    args.rrdb_iters if slow else args.iters,
                )
                rows.append(
                    {
                        "method": method,
                        "crop": f"{side}->{out}",
                        "format": fmt,
                        "bare_p50_ms": percentile(bare, 50),
                        "bare_p95_ms": percentile(bare, 95),
                        "http_p50_ms": percentile(e2e, 50),
                        "http_p95_ms": percentile(e2e, 95),
                        "ratio_p50": percentile(e2e, 50) / percentile(bare, 50),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
        results["latency"] = rows

        throughput = []
        with RssSampler(server.pid) as sampler:
            for clients in (1, 8):
                deadline = time.monotonic() + args.load_seconds

                def worker(deadline: float = deadline) -> int:
                    count = 0
                    with httpx.Client(base_url=service.url, timeout=120) as c:
                        while time.monotonic() < deadline:
                            c.post(
                                "/v1/zoom",
                                json={
                                    "image": {"id": image_id},
                                    "boxes": [[0, 0, 128, 128]],
                                    "method": "span-x4",
                                    "max_pixels": 512 * 512,
                                },
                            ).raise_for_status()
                            count += 1
                    return count

                start = time.monotonic()
                with ThreadPoolExecutor(clients) as pool:
                    done = sum(pool.map(lambda _: worker(), range(clients)))
                elapsed = time.monotonic() - start
                throughput.append({"clients": clients, "crops_per_s": done / elapsed})
                print(json.dumps(throughput[-1]), file=sys.stderr)
        results["throughput_span_128"] = throughput
        results["rss_peak_under_load_mb"] = sampler.peak / 2**20
        metrics = client.get("/metrics").text
        results["batch_size_histogram"] = [
            line for line in metrics.splitlines() if line.startswith("magsrl_sr_batch_size_")
        ]
    finally:
        supervisor.stop()

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(render(results))


def render(r: dict) -> str:  # type: ignore[type-arg]
    lines = [
        f"Machine: {r['machine']}",
        "",
        "| method | crop | format | bare p50 ms | bare p95 ms | HTTP p50 ms | HTTP p95 ms "
        "| HTTP/bare p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["latency"]:
        lines.append(
            f"| {row['method']} | {row['crop']} | {row['format']} | {row['bare_p50_ms']:.1f} | "
            f"{row['bare_p95_ms']:.1f} | {row['http_p50_ms']:.1f} | {row['http_p95_ms']:.1f} | "
            f"{row['ratio_p50']:.2f}x |"
        )
    lines += ["", "| clients | SPAN 128->512 crops/s |", "|---|---|"]
    for row in r["throughput_span_128"]:
        lines.append(f"| {row['clients']} | {row['crops_per_s']:.1f} |")
    lines += [
        "",
        f"RSS at rest: {r['rss_at_rest_mb']:.0f} MB; peak under load: "
        f"{r['rss_peak_under_load_mb']:.0f} MB",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
