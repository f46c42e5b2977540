"""``magsrl up``: the whole stack as local processes, with no Docker.

It prepares what is missing (SR weights), starts each service on its default port or a
free one, waits for every ``/ready``, prints the URLs, restarts a service that exits (with
backoff, and says so), and stops everything on Ctrl-C, SIGTERM or SIGHUP; its children die
with it even on SIGKILL. One ``magsrl up`` per state directory (a lock file).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import time
from pathlib import Path
from typing import IO, Any

from magsrl.cli.supervisor import ServiceFailed, Supervisor, free_port, port_is_free

# The services `up` runs, in start order, with their default ports.
STACK: list[tuple[str, int]] = [
    ("magnifier", 8001),
    ("judge", 8002),
    ("policy", 8000),
    ("trainer", 8003),
]
TRAIN_WORKERS = 2
DEFAULT_MODEL = "nano"  # the gates of docs/nano.md passed; tiny stays for tests
REDIS_PORT = 6379
MODEL_PROBE_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 300.0
WATCH_INTERVAL_S = 0.5
REDIS_START_TIMEOUT_S = 10.0
LOCK_FILE = "up.lock"


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
        help="policy model: a Hugging Face id, a local path, tiny (random weights) or nano "
        "(trained to zoom, docs/nano.md) (default: MAGSRL_POLICY_MODEL or nano)",
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
    model = served_model(args.model)
    problem = check_model(model)
    if problem:
        console.print(f"[red]{problem}")
        return 2
    args.state_dir.mkdir(parents=True, exist_ok=True)
    lock = take_lock(args.state_dir)
    if isinstance(lock, str):
        console.print(f"[red]{lock}")
        return 1
    _prepare_weights(console)
    supervisor = Supervisor(args.state_dir / "logs", tie_to_parent=True)
    redis = EmbeddedRedis(port=pick_port(REDIS_PORT), data_dir=args.state_dir / "redis")
    ports = {name: pick_port(port) for name, port in STACK}
    urls = {
        f"MAGSRL_{name.upper()}_URL": f"http://127.0.0.1:{port}" for name, port in ports.items()
    }
    urls["MAGSRL_REDIS_URL"] = redis.url
    model_env = {"MAGSRL_POLICY_MODEL": model}
    runs_env = {"MAGSRL_RUNS_DIR": str((args.state_dir / "runs").resolve())}

    stopping = False
    watching = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if not watching:  # still starting: stop now, not once every service is ready
            raise KeyboardInterrupt

    # HUP too: a closed terminal stops the stack cleanly instead of orphaning it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    console.print(f"starting redis, {', '.join(ports)}; logs in {supervisor.log_dir}/")
    # Redis first, supervised like the rest (restarted if it dies; its AOF keeps the queue).
    supervisor.add_process("redis", redis.argv(), port=redis.port)
    supervisor.start()
    try:
        if not wait_for_redis(supervisor, redis.port):
            console.print(f"[red]redis did not start (log: {supervisor.log_dir / 'redis.log'})")
            return 1
        for name, port in ports.items():
            supervisor.add_magsrl_service(name, port, env={**urls, **model_env, **runs_env})
        # Workers by default: without them the trainer sat at 0/8 for its whole step
        # timeout. They load no model (they call the policy over HTTP), so they cost little.
        for i in range(max(args.workers, 0)):
            supervisor.add_magsrl_service(
                "rollout-worker",
                0,
                env={**urls, **runs_env},  # the image store: <runs>/images, the trainer's
                http=False,
                label=f"rollout-worker-{i + 1}",
            )
        supervisor.start()
        supervisor.wait_ready(args.ready_timeout)
        print_table(console, Table, supervisor, redis.url, ports, args.workers, model)
        watching = True
        while not stopping:
            for event in supervisor.watch():
                console.print(f"[yellow]{event}")
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
        lock.close()


def take_lock(state_dir: Path) -> IO[str] | str:
    """The state directory's lock, held while this ``magsrl up`` runs (the kernel drops
    it when the process dies, however it dies); or why not: the holder's PID."""
    path = state_dir / LOCK_FILE
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        return (
            f"another magsrl up (pid {holder}) is running with state directory {state_dir}; "
            "stop it first, or pass another --state-dir"
        )
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def wait_for_redis(supervisor: Supervisor, port: int) -> bool:
    """True once redis-server answers PING on ``port``; False if it exited or timed out."""
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    service = supervisor.services[0]
    while time.monotonic() < deadline:
        if service.proc is None or service.proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def print_table(
    console: Any,
    table_cls: Any,
    supervisor: Supervisor,
    redis_url: str,
    ports: dict,
    workers: int,
    model: str = DEFAULT_MODEL,
) -> None:
    table = table_cls(title="magsrl is up")
    table.add_column("service")
    table.add_column("url")
    table.add_column("log")
    for service in supervisor.services:
        if service.name == "redis":
            url = redis_url
        else:
            url = service.url if service.http else "(takes jobs from redis)"
        table.add_row(service.name, url, str(service.log_path))
    console.print(table)
    for label, command in next_commands(ports["policy"], ports["trainer"], workers, model):
        # Each line fits 80 columns; soft_wrap: a narrower terminal does not get newlines
        # inserted into the command, so it still copies as one line.
        console.print(f"{label}: {command}", soft_wrap=True, markup=False, highlight=False)
    console.print("A service that exits is restarted. Ctrl-C stops everything.")


def served_model(model: str | None) -> str:
    """The policy model `up` serves: --model, else MAGSRL_POLICY_MODEL, else the nano model
    (trained to zoom; docs/nano.md), so a first `magsrl up` shows zooms and right answers."""
    return model or os.environ.get("MAGSRL_POLICY_MODEL") or DEFAULT_MODEL


def next_commands(
    policy_port: int, trainer_port: int, workers: int, model: str = DEFAULT_MODEL
) -> list[tuple[str, str]]:
    """What to try next, each command short enough for an 80-column terminal (a wrapped
    command copied from the terminal broke at the wrap)."""
    policy = f"http://127.0.0.1:{policy_port}"
    trainer = f"http://127.0.0.1:{trainer_port}"
    nano = model == "nano"
    dataset = "nano" if nano else "synthetic"
    commands = [
        ("ask", f'magsrl answer photo.jpg "What does it say?" --url {policy}'),
        ("viewer", f"{policy}/"),
        ("evaluate", f"magsrl eval {dataset} --limit 20 --policy {policy}"),
    ]
    if workers > 0:
        example = "train-nano.yaml" if nano else "train-tiny.yaml"
        commands.append(("train", f"magsrl train examples/{example} --url {trainer}"))
        commands.append(("runs", f"magsrl runs list --url {trainer}"))
    return commands


def check_model(model: str | None) -> str | None:
    """None when the policy model can be loaded, else what to do: checked before anything
    starts, so a typo does not cost a minute of service start-ups."""
    name = served_model(model)
    if name in ("tiny", "nano") or Path(name).expanduser().is_dir():
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
