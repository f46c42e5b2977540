"""Runs one service app under uvicorn with the project's logging."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from magsrl.common.logs import configure_logging

# Long enough for an in-flight SR batch or generation to finish on SIGTERM.
GRACEFUL_SHUTDOWN_S = 10


def serve(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    configure_logging(log_level)
    logging.getLogger("magsrl").info("starting %s on http://%s:%d", app.title, host, port)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    uvicorn.Server(config).run()
