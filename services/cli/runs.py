"""``magsrl runs list|follow|cancel``: the trainer's runs from the command line, over its
``/v1/runs``, ``/v1/runs/{id}/events`` (server-sent events) and ``/v1/runs/{id}/cancel``.
The trainer URL comes from --url or MAGSRL_TRAINER_URL, the key from MAGSRL_API_KEY."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from magsrl.cli.train import DEFAULT_URL, auth_headers, follow

HTTP_TIMEOUT_S = 30.0
STATUS_STYLE = {"paused": "[yellow]", "failed": "[red]", "completed": "[green]"}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "runs", help="list, follow or cancel training runs", description=__doc__
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every run on the trainer, newest first")
    follow_p = actions.add_parser("follow", help="a run's progress bar until it ends")
    follow_p.add_argument("run_id", metavar="RUN_ID", help="as 'magsrl runs list' shows it")
    cancel = actions.add_parser("cancel", help="stop a run after its current step")
    cancel.add_argument("run_id", metavar="RUN_ID", help="as 'magsrl runs list' shows it")
    for action in (listing, follow_p, cancel):
        action.add_argument(
            "--url",
            default=os.environ.get("MAGSRL_TRAINER_URL", DEFAULT_URL),
            help="the trainer (default: MAGSRL_TRAINER_URL or %(default)s)",
        )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    console = Console()
    url = args.url.rstrip("/")
    headers = auth_headers()
    try:
        if args.action == "list":
            return list_runs(url, headers, console)
        if args.action == "cancel":
            return cancel_run(url, args.run_id, headers, console)
        status, info = _get(url, f"/v1/runs/{args.run_id}", headers)
        if status != 200:
            return _refused(info, console)
        return follow(url, args.run_id, headers, info["total"], console)
    except httpx.HTTPError as exc:
        console.print(
            f"cannot reach the trainer at {url} ({exc.__class__.__name__}); start the stack "
            "with `magsrl up`, or pass --url",
            style="red",
            markup=False,
        )
        return 1


def _get(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import httpx

    resp = httpx.get(f"{url}{path}", headers=headers, timeout=HTTP_TIMEOUT_S)
    return resp.status_code, resp.json()


def _refused(body: dict[str, Any], console: Any) -> int:
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    console.print(message or str(body), style="red", markup=False)
    return 1


def list_runs(url: str, headers: dict[str, str], console: Any) -> int:
    from rich.table import Table

    status, body = _get(url, "/v1/runs", headers)
    if status != 200:
        return _refused(body, console)
    if not body["runs"]:
        console.print("no runs yet; start one with: magsrl train CONFIG.yaml")
        return 0
    table = Table()
    for column in ("run", "status", "step", "reward", "accuracy", "started"):
        table.add_column(column)
    for info in body["runs"]:
        metrics = info.get("metrics", {})
        table.add_row(
            info["run_id"],
            STATUS_STYLE.get(info["status"], "") + info["status"],
            f"{info['step']}/{info['total']}",
            _metric(metrics, "reward_mean"),
            _metric(metrics, "accuracy"),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(info["created_at"])),
        )
    console.print(table)
    for info in body["runs"]:
        # A paused run waits for a dependency: say which, or it looks stuck.
        if info["status"] == "paused" and info.get("reason"):
            console.print(f"{info['run_id']}: {info['reason']}", style="yellow", markup=False)
    return 0


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.3f}" if name in metrics else "-"


def cancel_run(url: str, run_id: str, headers: dict[str, str], console: Any) -> int:
    import httpx

    resp = httpx.post(f"{url}/v1/runs/{run_id}/cancel", headers=headers, timeout=HTTP_TIMEOUT_S)
    body = resp.json()
    if resp.status_code != 200:
        return _refused(body, console)
    console.print(f"run {run_id}: {body['status']} (stops after its current step)")
    return 0


def how_to_follow(run_id: str, url: str) -> str:
    """What ``magsrl train --detach`` prints after starting a run."""
    flag = "" if url == os.environ.get("MAGSRL_TRAINER_URL", DEFAULT_URL) else f" --url {url}"
    return (
        f"follow: magsrl runs follow {run_id}{flag}\n"
        f"cancel: magsrl runs cancel {run_id}{flag}\n"
        f"list:   magsrl runs list{flag}"
    )
