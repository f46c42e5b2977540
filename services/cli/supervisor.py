"""Runs services as local child processes: free ports, logs to files, readiness polling,
restarts with backoff, and a clean stop of the whole process group. ``magsrl up`` and the
tests both use it.

Children never outlive the supervisor: each asks the kernel (``prctl(PR_SET_PDEATHSIG)``)
for a SIGKILL when its parent dies, so even ``kill -9`` of ``magsrl up`` leaves nothing
serving. A child that exits while the stack runs is started again after a backoff
(``watch()``), doubling from ``RESTART_BACKOFF_S`` up to ``RESTART_BACKOFF_MAX_S`` and
reset once it has stayed up ``RESTART_STABLE_S``.
"""

from __future__ import annotations

import contextlib
import ctypes
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
__all__ = [
    "Service",
    "ServiceFailed",
    "Supervisor",
    "die_with_parent",
    "free_port",
    "port_is_free",
    "tail",
]

RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTART_STABLE_S = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the parent dies, whatever
    ended it (a signal Python could not catch included). Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl: then nothing would signal us.
    if os.getppid() == 1:
        os._exit(1)


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
    restarts: int = 0  # since it last stayed up RESTART_STABLE_S
    started_at: float = 0.0  # monotonic
    restart_at: float | None = None  # monotonic: when watch() starts it again

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        base_env: Mapping[str, str] | None = None,
        *,
        tie_to_parent: bool = False,
    ) -> None:
        """``tie_to_parent``: children get SIGKILL when this process dies (``magsrl up``).
        The kernel ties them to the *thread* that started them, so only a supervisor that
        starts every child from one long-lived thread (the main one) should set it."""
        self.log_dir = log_dir
        self.tie_to_parent = tie_to_parent
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

    def add_process(self, name: str, argv: list[str], port: int = 0) -> Service:
        """Any program (e.g. redis-server) supervised like a service, with no ``/ready``."""
        service = Service(name, argv, port, self.log_dir / f"{name}.log", http=False)
        self.services.append(service)
        return service

    def start(self) -> None:
        """Starts every service not started yet (so a stack can start in stages)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            if service.proc is None:
                self._spawn(service, mode="wb")

    def _spawn(self, service: Service, mode: str) -> None:
        log = service.log_path.open(mode)
        # Own session per child: Ctrl-C in the terminal reaches only us, and we stop each
        # child's whole group, so nothing is orphaned; die_with_parent covers our own death.
        service.proc = subprocess.Popen(
            service.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.base_env, **service.env},
            start_new_session=True,
            preexec_fn=die_with_parent if self.tie_to_parent else None,
        )
        service.started_at = time.monotonic()
        log.close()

    def watch(self) -> list[str]:
        """One look at the children: a dead one is scheduled for a restart with backoff,
        one whose time has come is started again. Returns what happened, for the user."""
        now = time.monotonic()
        events: list[str] = []
        for service in self.services:
            proc = service.proc
            if proc is None or (service.restart_at is None and proc.poll() is None):
                continue
            if service.restart_at is None:
                if now - service.started_at >= RESTART_STABLE_S:
                    service.restarts = 0
                delay = min(RESTART_BACKOFF_S * 2**service.restarts, RESTART_BACKOFF_MAX_S)
                service.restart_at = now + delay
                events.append(
                    f"{service.name} exited with code {proc.returncode}; restarting it in "
                    f"{delay:.0f}s (log: {service.log_path})"
                )
            elif now >= service.restart_at:
                service.restarts += 1
                service.restart_at = None
                self._spawn(service, mode="ab")
                assert service.proc is not None
                events.append(
                    f"{service.name} restarted (pid {service.proc.pid}, restart {service.restarts})"
                )
        return events

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
