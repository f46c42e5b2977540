"""Logging setup shared by services: one line per record, with the request id."""

from __future__ import annotations

import logging
import sys

from magsrl.common.request_id import RequestIdFilter

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"
# Probes polled several times a second (`magsrl up`, compose health checks): their access
# lines buried the one line that said why a service was not ready.
QUIET_ACCESS_PATHS = frozenset({"/ready", "/health"})


class ProbeAccessFilter(logging.Filter):
    """Drops uvicorn's access lines for the probes; uvicorn passes the path as the third
    argument (client, method, path, http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3:
            return str(args[2]).split("?")[0] not in QUIET_ACCESS_PATHS
        return True


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers carry their own handlers; route them through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, ProbeAccessFilter) for f in access.filters):
        access.addFilter(ProbeAccessFilter())
