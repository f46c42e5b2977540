"""The policy app factory: loads the engine in the background, and wires the magnifier client,
the zoom loop, the chat API, ``/answer`` and the trace viewer page.

Run: ``magsrl serve policy --port 8000`` (``MAGSRL_POLICY_MODEL=tiny`` for the offline model)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request

from magsrl.clients.magnifier import MagnifierClient
from magsrl.common.app import create_service_app
from magsrl.common.middleware import PUBLIC_PATHS
from magsrl.policy.api import router
from magsrl.policy.config import PolicySettings
from magsrl.policy.serving_answer import AnswerService
from magsrl.policy.serving_chat import ChatService
from magsrl.policy.viewer_api import PAGE_PATHS, STATIC_PREFIX, mount_viewer
from magsrl.policy.viewer_api import router as viewer_router
from magsrl.policy.viewer_crops import CropComparer
from magsrl.policy.viewer_samples import SampleStore
from magsrl.zoom.engine import Engine
from magsrl.zoom.loop import ZoomLoop


def build_engine(settings: PolicySettings) -> Engine:
    if settings.engine == "openai":
        from magsrl.engines.openai_upstream import OpenAIEngine

        return OpenAIEngine(settings.engine_settings())
    from magsrl.engines.hf import HFEngine

    return HFEngine(settings.engine_settings())


def create_app(settings: PolicySettings | None = None) -> FastAPI:
    settings = settings or PolicySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(settings)
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        async with httpx.AsyncClient(timeout=settings.url_timeout_s) as http:
            magnifier = MagnifierClient(
                settings.magnifier_url,
                api_key=api_key,
                timeout_s=settings.magnifier_timeout_s,
                registry=app.state.registry,
            )
            app.state.engine = engine
            app.state.magnifier = magnifier
            app.state.chat = ChatService(engine, settings)
            app.state.answer = AnswerService(
                engine, ZoomLoop(engine, magnifier), magnifier, http, settings
            )
            app.state.viewer_crops = CropComparer(magnifier, http, settings)
            app.state.viewer_samples = SampleStore(
                settings.viewer_samples, settings.viewer_samples_limit
            )
            starting = asyncio.create_task(engine.start())
            try:
                yield
            finally:
                starting.cancel()
                await engine.close()
                await magnifier.close()

    async def ready(request: Request) -> str | None:
        engine: Engine | None = getattr(request.app.state, "engine", None)
        return "starting" if engine is None else await engine.ready()

    app = create_service_app(
        name="policy",
        settings=settings,
        routers=[router, viewer_router],
        lifespan=lifespan,
        ready_check=ready,
        # The viewer page and its assets load without the key; the page then asks for it.
        public_paths=PUBLIC_PATHS | set(PAGE_PATHS),
        public_prefixes=[f"{STATIC_PREFIX}/"],
        description="Serves a Qwen-VL-class model with OpenAI tool calls for zoom, runs "
        "the two-round zoom loop behind /answer, and serves the trace viewer at /.",
    )
    mount_viewer(app)
    return app
