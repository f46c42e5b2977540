"""The app factory every service uses: probes, metrics, errors, auth, body cap, request ids.

A service passes its routers, a lifespan that builds its engine, and a readiness check;
everything cross-cutting is wired here once, in a fixed middleware order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from magsrl import __version__
from magsrl.common.http_errors import error_response, install_error_handlers
from magsrl.common.metrics import HTTPMetrics, MetricsMiddleware
from magsrl.common.middleware import PUBLIC_PATHS, BearerAuthMiddleware, BodyLimitMiddleware
from magsrl.common.request_id import RequestIdMiddleware
from magsrl.common.settings import ServiceSettings
from magsrl.proto.errors import ErrorResponse

# Returns None when ready, else the reason it is not.
ReadyCheck = Callable[[Request], Awaitable[str | None]]

# Documented on every route so clients see the envelope in /docs.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "Bad request"),
        (401, "Missing or wrong API key"),
        (404, "Unknown resource"),
        (413, "Too large"),
        (422, "Invalid request"),
        (502, "A dependency answered with something unusable"),
        (503, "A dependency is down or not ready, or the server is out of capacity; retry"),
    ]
}


def _probe_router(ready_check: ReadyCheck | None) -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get("/health", summary="The process is alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="200 once the model and dependencies are usable, else 503",
        responses={503: ERROR_RESPONSES[503]},
    )
    async def ready(request: Request) -> Response:
        reason = await ready_check(request) if ready_check else None
        if reason:
            return error_response(503, f"not ready: {reason}")
        return JSONResponse({"status": "ready"})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        registry: CollectorRegistry = request.app.state.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def create_service_app(
    *,
    name: str,
    settings: ServiceSettings,
    description: str,
    routers: Iterable[APIRouter] = (),
    lifespan: Callable[[FastAPI], Any] | None = None,
    ready_check: ReadyCheck | None = None,
    public_paths: Iterable[str] | None = None,
    public_prefixes: Iterable[str] = (),
) -> FastAPI:
    """``public_paths`` replaces the paths open without the key (probes and docs by default);
    ``public_prefixes`` opens whole subtrees, such as a page's static assets."""
    registry = CollectorRegistry()
    app = FastAPI(
        title=f"magsrl {name}",
        description=description,
        version=__version__,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.registry = registry
    install_error_handlers(app)
    app.include_router(_probe_router(ready_check))
    for router in routers:
        app.include_router(router)

    # add_middleware prepends, so the last one added runs first (outermost).
    if settings.api_key is not None:
        app.add_middleware(
            BearerAuthMiddleware,
            api_key=settings.api_key.get_secret_value(),
            public_paths=PUBLIC_PATHS if public_paths is None else frozenset(public_paths),
            public_prefixes=tuple(public_prefixes),
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=HTTPMetrics(name, registry))
    app.add_middleware(RequestIdMiddleware)
    return app
