"""``magsrl train CONFIG.yaml``: starts a run on the trainer and follows it with a progress
bar (step, reward, accuracy, zoom rate, ETA), ending with a summary and the paths of the
final adapter and the plots. Relative paths in the config are read against its folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8003"
SUMMARY_METRICS = ("reward_mean", "accuracy", "zoom_rate", "format", "loss", "kl", "logprob_diff")


def register(sub: Any) -> None:
    parser = sub.add_parser("train", help="start a training run and follow it", description=__doc__)
    parser.add_argument(
        "config", type=Path, help="a run config (YAML), e.g. examples/train-tiny.yaml"
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("MAGSRL_TRAINER_URL", DEFAULT_URL),
        help="the trainer (default: MAGSRL_TRAINER_URL or %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="start it, print how to follow and cancel it, and return",
    )
    parser.set_defaults(func=run)


def load_config(path: Path, steps: int | None) -> Any:
    from magsrl.trainer.run_config import RunConfig

    config = RunConfig.from_yaml(path)
    base = path.resolve().parent
    updates: dict[str, Any] = {}
    for name in ("dataset",):  # output_dir names a folder under the runs directory
        value = getattr(config, name)
        if value and not Path(value).is_absolute():
            updates[name] = str((base / value).resolve())
    if steps is not None:
        updates["steps"] = steps
    return RunConfig.model_validate({**config.model_dump(), **updates})


def auth_headers() -> dict[str, str]:
    """The trainer's bearer key, from MAGSRL_API_KEY, when one is set."""
    key = os.environ.get("MAGSRL_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def config_error(exc: Exception) -> str:
    """One line for a config that cannot be read: pydantic's text with its documentation
    URL, or a YAML parser's traceback, told a user nothing a line and a key would not."""
    import yaml
    from pydantic import ValidationError

    from magsrl.common.errors import validation_message

    if isinstance(exc, ValidationError):
        return validation_message(list(exc.errors()))[0]
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return (
            f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: "
            f"{exc.problem or exc.context}"
        )
    if isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def run(args: argparse.Namespace) -> int:
    import httpx
    import yaml
    from pydantic import ValidationError
    from rich.console import Console

    console = Console()
    try:
        config = load_config(args.config, args.steps)
    except (OSError, ValidationError, ValueError, yaml.YAMLError) as exc:
        console.print(
            f"{args.config}: {config_error(exc)}",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 2
    headers = auth_headers()
    url = args.url.rstrip("/")
    try:
        resp = httpx.post(f"{url}/v1/runs", json=config.model_dump(), headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        console.print(
            f"[red]cannot reach the trainer at {url} ({exc.__class__.__name__}); start the "
            "stack with 'magsrl up', or pass --url"
        )
        return 1
    if resp.status_code != 202:
        error = (
            resp.json().get("error", {})
            if resp.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        console.print(
            f"[red]the trainer refused the run ({resp.status_code}): "
            f"{error.get('message', resp.text[:300])}"
        )
        return 1
    created = resp.json()
    run_id = created["run_id"]
    console.print(
        f"run {run_id} {created['status']}"
        + (f" ({created['position']} ahead of it)" if created.get("position") else "")
    )
    if args.detach:
        from magsrl.cli.runs import how_to_follow

        console.print(how_to_follow(run_id, url), markup=False, soft_wrap=True)
        return 0
    return follow(url, run_id, headers, config.steps, console)


def follow(url: str, run_id: str, headers: dict[str, str], total: int, console: Any) -> int:
    import httpx
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
    )
    status = "running"
    try:
        with (
            Progress(*columns, console=console) as bar,
            httpx.stream(
                "GET", f"{url}/v1/runs/{run_id}/events", headers=headers, timeout=None
            ) as stream,
        ):
            task = bar.add_task(run_id, total=total, stats="")
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: ") :])
                if event["type"] == "step":
                    m = event["metrics"]
                    bar.update(
                        task,
                        completed=event["step"],
                        stats=f"reward {m.get('reward_mean', 0):.3f}  acc "
                        f"{m.get('accuracy', 0):.2f}  zoom {m.get('zoom_rate', 0):.2f}",
                    )
                elif event["type"] == "warning":
                    bar.console.print(f"[yellow]step {event['step']}: {event['message']}")
                elif event["type"] == "status":
                    status = event["status"]
                    paused = " (paused)" if status == "paused" else ""
                    bar.update(task, description=f"{run_id}{paused}")
                    if event.get("message"):
                        bar.console.print(f"{status}: {event['message']}")
    except KeyboardInterrupt:
        console.print(
            f"stopped following; the run goes on (magsrl runs follow {run_id}, "
            f"magsrl runs cancel {run_id})",
            markup=False,
        )
        return 130
    except httpx.HTTPError as exc:
        console.print(f"[red]lost the event stream: {exc}")
        return 1
    return summary(url, run_id, headers, status, console)


def summary(url: str, run_id: str, headers: dict[str, str], status: str, console: Any) -> int:
    import httpx
    from rich.table import Table

    info = httpx.get(f"{url}/v1/runs/{run_id}", headers=headers, timeout=30).json()
    table = Table(
        title=f"run {run_id}: {info['status']} after {info['step']}/{info['total']} steps"
    )
    table.add_column("metric")
    table.add_column("last step", justify="right")
    for name in SUMMARY_METRICS:
        if name in info["metrics"]:
            table.add_row(name, f"{info['metrics'][name]:.4g}")
    console.print(table)
    if info.get("error"):
        console.print(f"[red]{info['error']}")
    if info.get("adapter"):
        console.print(f"adapter: {info['adapter']}")
    for plot in info.get("plots", []):
        console.print(f"plot: {plot}")
    return 0 if info["status"] == "completed" else 1
