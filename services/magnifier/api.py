"""HTTP routes of the magnifier: thin adapters over ``Magnifier``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import UploadFile

from magsrl.common.errors import BadRequest
from magsrl.magnifier.service import Magnifier
from magsrl.magnifier.sr.weights import BACKENDS
from magsrl.proto.images import ImageInfo
from magsrl.proto.magnifier import ZoomRequest, ZoomResponse

router = APIRouter(prefix="/v1", tags=["magnifier"])


def get_magnifier(request: Request) -> Magnifier:
    return request.app.state.magnifier


MagnifierDep = Annotated[Magnifier, Depends(get_magnifier)]

_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image bytes, raw (any image/* or application/octet-stream "
        "content type) or as multipart form field `image`.",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


async def read_upload(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        field = form.get("image") or form.get("file")
        if not isinstance(field, UploadFile):
            raise BadRequest("multipart upload needs a file field named 'image'", param="image")
        return await field.read()
    if content_type.startswith(("application/json", "application/x-www-form-urlencoded", "text/")):
        raise BadRequest(
            "send the image bytes raw (e.g. Content-Type: image/png) or as "
            "multipart field 'image'; to zoom by URL or base64 use POST /v1/zoom",
            param="image",
        )
    return await request.body()


@router.post(
    "/images",
    response_model=ImageInfo,
    openapi_extra=_UPLOAD_DOC,
    summary="Upload an image once; zoom into it by id",
)
async def upload_image(request: Request, magnifier: MagnifierDep) -> ImageInfo:
    return await magnifier.put_image(await read_upload(request))


@router.get(
    "/images/{image_id}",
    summary="A stored image, as PNG",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_image(image_id: str, magnifier: MagnifierDep) -> Response:
    return Response(await magnifier.get_image_png(image_id), media_type="image/png")


@router.post("/zoom", response_model=ZoomResponse, summary="Crop and upscale regions")
async def zoom(body: ZoomRequest, magnifier: MagnifierDep) -> ZoomResponse:
    return await magnifier.zoom(body)


@router.get("/methods", summary="Methods and SR backends usable here")
async def methods(magnifier: MagnifierDep) -> dict[str, Any]:
    engine = magnifier.engine
    backends = []
    for name, spec in BACKENDS.items():
        reason = engine.unavailable_reason(name)
        backends.append(
            {
                "name": name,
                "scale": spec.scale,
                "perceptual": spec.perceptual,
                "available": reason is None,
                "loaded": engine.is_loaded(name),
                "reason": reason,
            }
        )
    return {
        "methods": magnifier.methods(),
        "default": magnifier.settings.default_backend,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "backends": backends,
    }
