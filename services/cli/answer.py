"""``magsrl answer IMAGE "QUESTION"``: asks a running policy, and prints the answer, each
round's reasoning and the boxes it zoomed into."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 600.0


def register(sub: Any) -> None:
    parser = sub.add_parser("answer", help="answer a question about an image", description=__doc__)
    parser.add_argument("image", type=Path)
    parser.add_argument("question")
    parser.add_argument(
        "--url", default=os.environ.get("MAGSRL_POLICY_URL", "http://127.0.0.1:8000")
    )
    parser.add_argument("--options", nargs="+", default=None, help="multiple-choice options")
    parser.add_argument("--zoom", choices=["auto", "off", "force"], default="auto")
    parser.add_argument("--upscale", choices=["sr", "bicubic", "crop"], default="sr")
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--model", default=None, help="an adapter name")
    parser.add_argument("--json", action="store_true", help="print the raw response")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    console = Console()
    if not args.image.is_file():
        console.print(f"[red]no such image: {args.image}")
        return 2
    data: dict[str, str] = {
        "question": args.question,
        "zoom": args.zoom,
        "upscale": args.upscale,
        "max_rounds": str(args.max_rounds),
    }
    if args.options:
        data["options"] = json.dumps(args.options)
    if args.model:
        data["model"] = args.model
    key = os.environ.get("MAGSRL_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.post(
            f"{args.url.rstrip('/')}/answer",
            data=data,
            headers=headers,
            files={"image": (args.image.name, args.image.read_bytes())},
            timeout=DEFAULT_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the policy at {args.url}: {exc}")
        return 1
    body = resp.json()
    if resp.status_code != 200:
        console.print(f"[red]{resp.status_code}: {body.get('error', {}).get('message', body)}")
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    for i, rnd in enumerate(body["rounds"], 1):
        console.rule(f"round {i}")
        console.print(rnd["text"], markup=False, highlight=False)
        for zoom in rnd["zooms"]:
            if zoom["error"]:
                console.print(f"  zoom refused: {zoom['error']}", markup=False)
            else:
                crop = zoom["crop"] or {}
                console.print(
                    f"  zoom {zoom['box']} -> {crop.get('width')}x"
                    f"{crop.get('height')} ({crop.get('method')}, "
                    f"{crop.get('model')})",
                    markup=False,
                )
    console.rule("answer")
    console.print(body["answer"], markup=False, highlight=False)
    t = body["timing_ms"]
    console.print(
        f"[dim]model {body['model']}; {t['total']:.0f} ms total = model "
        f"{t['model']:.0f} + magnifier {t['magnifier']:.0f} + overhead "
        f"{t['overhead']:.0f}"
    )
    return 0
