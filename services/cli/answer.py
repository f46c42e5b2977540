"""``magsrl answer IMAGE "QUESTION"``: asks a running policy, and prints the answer, each
round's reasoning and the boxes it zoomed into."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magsrl.proto.vocab import PROTOCOLS, UPSCALE_METHODS, ZOOM_MODES

if TYPE_CHECKING:
    from magsrl.proto.policy import AnswerResponse

DEFAULT_TIMEOUT_S = 600.0


def register(sub: Any) -> None:
    parser = sub.add_parser("answer", help="answer a question about an image", description=__doc__)
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("question", help="the question, quoted")
    parser.add_argument(
        "--url",
        default=os.environ.get("MAGSRL_POLICY_URL", "http://127.0.0.1:8000"),
        help="the policy (default: MAGSRL_POLICY_URL or %(default)s)",
    )
    parser.add_argument("--options", nargs="+", default=None, help="multiple-choice options")
    parser.add_argument(
        "--zoom",
        choices=ZOOM_MODES,
        default="auto",
        help="auto: the model decides; force: round 1 must zoom; off (default: %(default)s)",
    )
    parser.add_argument(
        "--upscale",
        choices=UPSCALE_METHODS,
        default="sr",
        help="how crops are enlarged (default: %(default)s)",
    )
    parser.add_argument(
        "--max-rounds", type=int, default=None, help="default: the protocol's turn limit"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="the zoom protocol (GET /v1/protocols); default: the policy's",
    )
    parser.add_argument("--model", default=None, help="an adapter name")
    parser.add_argument("--json", action="store_true", help="print the raw response")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from magsrl.clients.policy import PolicyClient, PolicyError

    console = Console()
    if not args.image.is_file():
        console.print(f"[red]no such image: {args.image}")
        return 2
    data: dict[str, str] = {
        "question": args.question,
        "zoom": args.zoom,
        "upscale": args.upscale,
    }
    if args.max_rounds:
        data["max_rounds"] = str(args.max_rounds)
    if args.protocol:
        data["protocol"] = args.protocol
    if args.options:
        data["options"] = json.dumps(args.options)
    if args.model:
        data["model"] = args.model

    async def ask() -> AnswerResponse:
        key = os.environ.get("MAGSRL_API_KEY") or None
        async with PolicyClient(args.url, api_key=key, timeout_s=DEFAULT_TIMEOUT_S) as policy:
            return await policy.answer_upload(args.image.read_bytes(), args.image.name, data)

    try:
        response = asyncio.run(ask())
    except PolicyError as exc:
        console.print(f"[red]{exc.status or 'error'}: {exc.message}", markup=True)
        return 1
    if args.json:
        print(response.model_dump_json(indent=2))
        return 0
    for i, rnd in enumerate(response.rounds, 1):
        console.rule(f"round {i}")
        console.print(rnd.text, markup=False, highlight=False)
        for zoom in rnd.zooms:
            if zoom.error:
                console.print(f"  zoom refused: {zoom.error}", markup=False)
            else:
                crop = zoom.crop
                size = f"{crop.width}x{crop.height} ({crop.method}, {crop.model})" if crop else ""
                console.print(f"  zoom {zoom.box} -> {size}", markup=False)
    console.rule("answer")
    console.print(response.answer, markup=False, highlight=False)
    console.print(f"[dim]{timing_line(response.model, response.timing_ms)}")
    return 0


def timing_line(model: str, t: dict[str, float]) -> str:
    """The policy's time split, queue wait on its own: it used to be counted as overhead."""
    queue = (
        f"queue {t['queue']:.0f}"
        if "queue" in t
        else "queue n/a (an OpenAI upstream's queue is inside model)"
    )
    return (
        f"model {model}; {t['total']:.0f} ms total = model {t['model']:.0f} + magnifier "
        f"{t['magnifier']:.0f} + {queue} + overhead {t['overhead']:.0f}"
    )
