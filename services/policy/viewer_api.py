"""HTTP routes of the trace viewer: the page at ``/`` and its assets under ``/static/`` (open
without the key, so the page can ask for it), and the JSON endpoints the page calls under
``/v1/viewer/`` (behind the key like every other API route). See docs/viewer.md."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from magsrl.policy.viewer_crops import CropComparer
from magsrl.policy.viewer_samples import SampleStore
from magsrl.proto.viewer import CropsRequest, CropsResponse, SampleList

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static"
PAGE_PATHS = ("/",)
# The page reads this to know whether to ask for a key before its first API call, so an
# unauthenticated call (and the browser's console error for its 401) never happens.
_AUTH_META = '<meta name="magsrl-auth" content="off">'
_AUTH_REQUIRED = '<meta name="magsrl-auth" content="required">'
# Sample images are fixed for the life of the process; the page fetches them with the key.
_SAMPLE_CACHE = "private, max-age=3600"

router = APIRouter(tags=["viewer"])


def get_comparer(request: Request) -> CropComparer:
    return request.app.state.viewer_crops


def get_samples(request: Request) -> SampleStore:
    return request.app.state.viewer_samples


ComparerDep = Annotated[CropComparer, Depends(get_comparer)]
SamplesDep = Annotated[SampleStore, Depends(get_samples)]


class _Assets(StaticFiles):
    """Static files that the browser revalidates on each load (a cheap 304 by ETag), so an
    upgraded policy never runs against a stale script."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


@functools.cache
def _index_html() -> str:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if _AUTH_META not in html:
        raise RuntimeError(f"{STATIC_DIR / 'index.html'} lost its auth marker {_AUTH_META}")
    return html


def mount_viewer(app: FastAPI) -> None:
    app.mount(STATIC_PREFIX, _Assets(directory=STATIC_DIR), name="static")


@router.get("/", include_in_schema=False)
async def index(request: Request) -> HTMLResponse:
    html = _index_html()
    if request.app.state.settings.api_key is not None:
        html = html.replace(_AUTH_META, _AUTH_REQUIRED)
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.post(
    "/v1/viewer/crops",
    response_model=CropsResponse,
    summary="The same boxes under each upscaling method (sr, bicubic, crop), side by side",
)
async def crops(body: CropsRequest, comparer: ComparerDep) -> CropsResponse:
    return await comparer.compare(body)


@router.get("/v1/viewer/samples", response_model=SampleList, summary="Samples to pick from")
async def samples(store: SamplesDep) -> SampleList:
    return await store.list()


@router.get(
    "/v1/viewer/samples/{sample_id:path}/image",
    response_class=Response,
    summary="A sample's image bytes",
    responses={200: {"content": {"image/*": {}}}},
)
async def sample_image(sample_id: str, store: SamplesDep) -> Response:
    data, media_type = await store.image(sample_id)
    return Response(data, media_type=media_type, headers={"Cache-Control": _SAMPLE_CACHE})
