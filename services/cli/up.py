"""``magsrl up``: the whole stack as local processes, with no Docker.

It prepares what is missing (SR weights), starts each service on its default port or a
free one, waits for every ``/ready``, prints the URLs, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

from magsrl.cli.supervisor import ServiceFailed, Supervisor, free_port, port_is_free

# The services `up` runs, in start order, with their default ports.
STACK: list[tuple[str, int]] = [
    ("magnifier", 8001),
    ("judge", 8002),
    ("policy", 8000),
    ("trainer", 8003),
]
TRAIN_WORKERS = 2
REDIS_PORT = 6379
MODEL_PROBE_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 300.0
WATCH_INTERVAL_S = 0.5


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "up", help="run the whole stack locally (no Docker)", description=__doc__
    )
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".magsrl"), help="logs and data (default: ./.magsrl)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="policy model: a Hugging Face id, a local path, or tiny "
        "(default: MAGSRL_POLICY_MODEL or tiny)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="kept for old scripts: rollout workers now run by default",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=TRAIN_WORKERS,
        help="rollout workers for 'magsrl train'; 0 runs none, and a run then waits "
        "for workers started elsewhere (default: %(default)s)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help="seconds to wait for every service's /ready (default: %(default)s)",
    )
    parser.set_defaults(func=run)


def pick_port(default: int) -> int:
    return default if port_is_free(default) else free_port()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from magsrl.common.redis_server import EmbeddedRedis

    console = Console()
    problem = check_model(args.model)
    if problem:
        console.print(f"[red]{problem}")
        return 2
    _prepare_weights(console)
    supervisor = Supervisor(args.state_dir / "logs")
    redis = EmbeddedRedis(
        port=pick_port(REDIS_PORT),
        data_dir=args.state_dir / "redis",
        log_path=supervisor.log_dir / "redis.log",
    )
    ports = {name: pick_port(port) for name, port in STACK}
    urls = {
        f"MAGSRL_{name.upper()}_URL": f"http://127.0.0.1:{port}" for name, port in ports.items()
    }
    urls["MAGSRL_REDIS_URL"] = redis.url
    model_env = {"MAGSRL_POLICY_MODEL": args.model} if args.model else {}
    runs_env = {"MAGSRL_RUNS_DIR": str((args.state_dir / "runs").resolve())}
    for name, port in ports.items():
        supervisor.add_magsrl_service(name, port, env={**urls, **model_env, **runs_env})
    # Workers by default: without them the trainer sat at 0/8 for its whole step timeout.
    # They load no model (they call the policy over HTTP), so they cost little.
    for i in range(max(args.workers, 0)):
        supervisor.add_magsrl_service(
            "rollout-worker", 0, env=urls, http=False, label=f"rollout-worker-{i + 1}"
        )

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    console.print(f"starting redis, {', '.join(ports)}; logs in {supervisor.log_dir}/")
    supervisor.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        redis.start()
    except RuntimeError as exc:
        console.print(f"[red]redis: {exc} (log: {supervisor.log_dir / 'redis.log'})")
        return 1
    supervisor.start()
    try:
        supervisor.wait_ready(args.ready_timeout)
        table = Table(title="magsrl is up")
        table.add_column("service")
        table.add_column("url")
        table.add_column("log")
        table.add_row("redis", redis.url, str(supervisor.log_dir / "redis.log"))
        for service in supervisor.services:
            url = service.url if service.http else "(takes jobs from redis)"
            table.add_row(service.name, url, str(service.log_path))
        console.print(table)
        for label, command in next_commands(ports["policy"], ports["trainer"], args.workers):
            console.print(f"{label}:")
            # soft_wrap: a command longer than the terminal is not broken by inserted
            # newlines, so it copies as one line.
            console.print(f"  {command}", soft_wrap=True, markup=False, highlight=False)
        console.print("Ctrl-C stops everything.")
        while not stopping:
            supervisor.check_alive()
            time.sleep(WATCH_INTERVAL_S)
        return 0
    except ServiceFailed as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        console.print("stopping...")
        supervisor.stop()
        redis.stop()


def next_commands(policy_port: int, trainer_port: int, workers: int) -> list[tuple[str, str]]:
    """What to try next, each command short enough for an 80-column terminal (a wrapped
    command copied from the terminal broke at the wrap)."""
    policy = f"http://127.0.0.1:{policy_port}"
    trainer = f"http://127.0.0.1:{trainer_port}"
    commands = [
        ("ask", f'magsrl answer photo.jpg "What is on the sign?" --url {policy}'),
        ("trace viewer", f"{policy}/"),
        ("evaluate", f"magsrl eval synthetic --limit 20 --policy {policy}"),
    ]
    if workers > 0:
        commands.append(("train", f"magsrl train examples/train-tiny.yaml --url {trainer}"))
        commands.append(("runs", f"magsrl runs list --url {trainer}"))
    return commands


def check_model(model: str | None) -> str | None:
    """None when the policy model can be loaded, else what to do: checked before anything
    starts, so a typo does not cost a minute of service start-ups."""
    import os

    name = model or os.environ.get("MAGSRL_POLICY_MODEL") or "tiny"
    if name == "tiny" or Path(name).expanduser().is_dir():
        return None
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return f"--model {name}: no such model folder (give a folder with config.json)"
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, local_files_only=True, allow_patterns=["config.json"])
        return None
    except Exception:  # not cached: is the hub reachable?
        pass
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(name, timeout=MODEL_PROBE_TIMEOUT_S)
        return None
    except Exception as exc:
        return (
            f"--model {name}: not in the Hugging Face cache and not downloadable "
            f"({exc.__class__.__name__}). Use --model tiny for the offline model, set HF_HOME "
            "to a cache that has it, or pass a local folder."
        )


def _prepare_weights(console: Any) -> None:
    from magsrl.magnifier.config import MagnifierSettings
    from magsrl.magnifier.sr.weights import prepare_weights

    settings = MagnifierSettings()
    missing = [
        n for n in settings.preload if not (settings.weights_dir / f"{n}.safetensors").exists()
    ]
    if missing:
        console.print(f"preparing SR weights for {', '.join(missing)} in {settings.weights_dir}")
        prepare_weights(settings.weights_dir, names=missing)
