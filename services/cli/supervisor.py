"""Runs services as local child processes: free ports, logs to files, readiness polling, and
a clean stop of the whole process group. ``magsrl up`` and the tests both use it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from magsrl.common.ports import free_port, port_is_free

READY_POLL_S = 0.2
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30
# A /ready reason that will never turn into 200: waiting out the timeout only hides it.
FATAL_READY_REASONS = ("failed to load",)
__all__ = ["Service", "ServiceFailed", "Supervisor", "free_port", "port_is_free", "tail"]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ServiceFailed(RuntimeError):
    def __init__(self, name: str, message: str, log_tail: str) -> None:
        super().__init__(f"{name} {message}\n--- last lines of its log ---\n{log_tail}")
        self.name = name
        self.log_tail = log_tail


@dataclass
class Service:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    http: bool = True  # False: no /ready to poll (rollout workers); alive is ready

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Supervisor:
    def __init__(self, log_dir: Path, base_env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.services: list[Service] = []

    def add_magsrl_service(
        self,
        name: str,
        port: int,
        env: Mapping[str, str] | None = None,
        extra_args: list[str] | None = None,
        *,
        http: bool = True,
        label: str | None = None,
    ) -> Service:
        """``label`` names the log and the table row when one service runs several times."""
        argv = [sys.executable, "-m", "magsrl.cli", "serve", name]
        argv += ["--port", str(port)] if http else []
        argv += extra_args or []
        label = label or name
        service = Service(
            label, argv, port, self.log_dir / f"{label}.log", dict(env or {}), http=http
        )
        self.services.append(service)
        return service

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            log = service.log_path.open("wb")
            # Own session per child: Ctrl-C in the terminal reaches only us, and we stop
            # each child's whole group, so nothing is orphaned.
            service.proc = subprocess.Popen(
                service.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.base_env, **service.env},
                start_new_session=True,
            )
            log.close()

    def check_alive(self) -> None:
        for service in self.services:
            if service.proc is not None and service.proc.poll() is not None:
                raise ServiceFailed(
                    service.name,
                    f"exited with code {service.proc.returncode}",
                    tail(service.log_path),
                )

    def wait_ready(self, timeout_s: float, headers: Mapping[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = {s.name: s for s in self.services if s.http}
        last_reason: dict[str, str] = {}
        with httpx.Client(timeout=2.0, headers=dict(headers or {})) as client:
            while pending:
                self.check_alive()
                for name, service in list(pending.items()):
                    try:
                        resp = client.get(f"{service.url}/ready")
                    except httpx.HTTPError as exc:
                        last_reason[name] = f"not listening yet ({exc.__class__.__name__})"
                        continue
                    if resp.status_code == 200:
                        del pending[name]
                    else:
                        last_reason[name] = resp.text[:300]
                        if any(marker in resp.text for marker in FATAL_READY_REASONS):
                            raise ServiceFailed(name, _ready_message(resp), tail(service.log_path))
                if pending and time.monotonic() > deadline:
                    name = next(iter(pending))
                    raise ServiceFailed(
                        name,
                        f"not ready after {timeout_s:.0f}s: {last_reason.get(name, '')}",
                        tail(pending[name].log_path),
                    )
                if pending:
                    time.sleep(READY_POLL_S)

    def stop(self) -> None:
        procs = [s.proc for s in self.services if s.proc is not None and s.proc.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _ready_message(resp: httpx.Response) -> str:
    """The reason of a 503 from /ready, from its error envelope when it has one."""
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:300]
