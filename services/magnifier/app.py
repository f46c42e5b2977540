"""The magnifier app factory: builds the engine at start-up and preloads the default backends.

Run: ``magsrl serve magnifier --port 8001``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request

from magsrl.common.app import create_service_app
from magsrl.magnifier.api import router
from magsrl.magnifier.config import MagnifierSettings
from magsrl.magnifier.engine import SREngine
from magsrl.magnifier.service import Magnifier

log = logging.getLogger("magsrl.magnifier")


def create_app(settings: MagnifierSettings | None = None) -> FastAPI:
    settings = settings or MagnifierSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = SREngine(settings, app.state.registry)
        async with httpx.AsyncClient(timeout=settings.url_timeout_s) as http:
            app.state.magnifier = Magnifier(settings, engine, http, app.state.registry)
            app.state.preload_errors = {}
            app.state.preload = asyncio.create_task(_preload(app, engine, settings.preload))
            try:
                yield
            finally:
                app.state.preload.cancel()
                await engine.close()

    async def ready(request: Request) -> str | None:
        task: asyncio.Task[None] | None = getattr(request.app.state, "preload", None)
        if task is None or not task.done():
            return "loading super-resolution weights"
        errors: dict[str, str] = request.app.state.preload_errors
        if errors:
            return "; ".join(f"{name}: {msg}" for name, msg in errors.items())
        return None

    return create_service_app(
        name="magnifier",
        settings=settings,
        routers=[router],
        lifespan=lifespan,
        ready_check=ready,
        description="Crops regions of an image and upscales them with super-resolution.",
    )


async def _preload(app: FastAPI, engine: SREngine, names: list[str]) -> None:
    for name in names:
        try:
            await engine.load(name)
        except Exception as exc:  # reported through /ready rather than crashing the server
            log.error("could not load %s: %s", name, exc)
            app.state.preload_errors[name] = str(exc)
