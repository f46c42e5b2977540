"""``magsrl up`` without starting the stack: rollout workers by default, printed commands
that copy as one line, a model that fails to load reported at once, quiet probe logs."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from magsrl.cli import build_parser
from magsrl.cli.supervisor import Service, ServiceFailed, Supervisor, free_port
from magsrl.cli.up import next_commands
from magsrl.common.logs import ProbeAccessFilter

# A stand-in policy whose model failed to load: /ready answers 503 with the policy's reason.
FAILED_POLICY = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"error": {"type": "unavailable", "message":
            "not ready: model failed to load: OSError: no config.json in /models/x"}}).encode()
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_plain_up_runs_rollout_workers() -> None:
    """Pins: plain `magsrl up` (what `make up` runs) started no workers, so `magsrl train`
    sat at 0/8 until its step timeout."""
    args = build_parser().parse_args(["up"])
    assert args.workers >= 1


def test_printed_commands_fit_80_columns() -> None:
    """Pins: `magsrl up`'s next commands wrapped in an 80-column terminal and broke when
    copied."""
    for label, command in next_commands(54321, 54322, workers=2):
        assert len(f"{label}: {command}") <= 80, command
    assert any("magsrl runs list" in c for _, c in next_commands(8000, 8003, workers=2))


def test_a_model_that_failed_to_load_stops_the_wait_at_once(tmp_path: Path) -> None:
    """Pins: a policy whose model failed to load cost the whole ready timeout (300 s) and
    the error was buried under `GET /ready 503` lines."""
    port = free_port()
    supervisor = Supervisor(tmp_path / "logs")
    supervisor.services.append(
        Service(
            "policy",
            [sys.executable, "-c", FAILED_POLICY, str(port)],
            port,
            tmp_path / "logs" / "policy.log",
        )
    )
    supervisor.start()
    started = time.monotonic()
    try:
        with pytest.raises(ServiceFailed) as failed:
            supervisor.wait_ready(60.0)
    finally:
        supervisor.stop()
    assert time.monotonic() - started < 20
    assert "model failed to load: OSError: no config.json" in str(failed.value)


def test_probe_polls_leave_no_access_lines() -> None:
    """Pins: every /ready poll wrote an access line, 30 of them in the log tail `up` shows."""
    quiet = ProbeAccessFilter()

    def record(path: str) -> logging.LogRecord:
        args = ("127.0.0.1:5", "GET", path, "1.1", 503)
        return logging.LogRecord("uvicorn.access", 20, "", 0, '%s "%s %s HTTP/%s" %d', args, None)

    assert not quiet.filter(record("/ready"))
    assert quiet.filter(record("/v1/answer"))


@pytest.mark.slow
def test_up_with_a_model_that_cannot_load_stops_with_the_error(tmp_path: Path) -> None:
    """Pins, end to end: `magsrl up` with a broken model folder waited out its whole ready
    timeout and printed 30 lines of `GET /ready 503` instead of the load error."""
    import subprocess

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no_such_architecture"}')
    started = time.monotonic()
    argv = ["up", "--state-dir", str(tmp_path / "state"), "--model", str(broken)]
    argv += ["--workers", "0", "--ready-timeout", "280"]
    proc = subprocess.run(
        [sys.executable, "-m", "magsrl.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        start_new_session=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert time.monotonic() - started < 200
    assert "model failed to load" in out
    assert "GET /ready" not in out
