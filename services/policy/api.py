"""HTTP routes of the policy: thin adapters over the chat, answer and adapter logic."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from magsrl.common.errors import (
    BadRequest,
    ServiceUnavailable,
    UnprocessableEntity,
    validation_message,
)
from magsrl.policy.config import PolicySettings
from magsrl.policy.limits import engine_limits
from magsrl.policy.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    LoadAdapterRequest,
    ModelCard,
    ModelList,
)
from magsrl.policy.serving_answer import AnswerService
from magsrl.policy.serving_chat import ChatService
from magsrl.policy.weights import (
    confined_adapter_folder,
    confined_model_folder,
    weights_status,
)
from magsrl.proto.limits import EngineLimits
from magsrl.proto.policy import (
    AnswerRequest,
    AnswerResponse,
    LoadWeightsRequest,
    PolicyInfo,
    WeightsStatus,
)
from magsrl.proto.protocols import ProtocolList
from magsrl.proto.vocab import PROTOCOLS, UPSCALE_METHODS, ZOOM_MODES
from magsrl.zoom.engine import Engine
from magsrl.zoom.protocols import PROTOCOLS as PROTOCOL_REGISTRY
from magsrl.zoom.protocols import resolve_protocol

router = APIRouter()


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_chat(request: Request) -> ChatService:
    return request.app.state.chat


def get_answer(request: Request) -> AnswerService:
    return request.app.state.answer


def get_settings(request: Request) -> PolicySettings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[PolicySettings, Depends(get_settings)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
AnswerDep = Annotated[AnswerService, Depends(get_answer)]

_ANSWER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/AnswerRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "question"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "question": {"type": "string"},
                        "options": {"type": "string", "description": "JSON list of options"},
                        "zoom": {"type": "string", "enum": list(ZOOM_MODES)},
                        "upscale": {"type": "string", "enum": list(UPSCALE_METHODS)},
                        "max_rounds": {"type": "integer"},
                        "protocol": {"type": "string", "enum": list(PROTOCOLS)},
                    },
                }
            },
        },
    }
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _answer_request(request: Request) -> AnswerRequest:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise BadRequest(
                    "multipart /answer needs a file field named 'image'", param="image"
                )
            fields: dict[str, Any] = {
                k: v for k, v in form.items() if k != "image" and isinstance(v, str)
            }
            if "options" in fields:
                try:
                    fields["options"] = json.loads(fields["options"])
                except ValueError as exc:
                    raise BadRequest(
                        'options must be a JSON list of strings, e.g. ["red", "blue"]',
                        param="options",
                    ) from exc
            data = await upload.read()
            fields["image"] = {"b64": await asyncio.to_thread(_b64, data)}  # off the loop
            return AnswerRequest.model_validate(fields)
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadRequest(
                "the body is not valid JSON; send JSON or multipart/form-data", param="body"
            ) from exc
        return AnswerRequest.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise UnprocessableEntity(message, param=param) from exc


@router.post(
    "/answer",
    response_model=AnswerResponse,
    openapi_extra=_ANSWER_DOC,
    tags=["zoom"],
    summary="Answer a question about an image with the zoom loop",
)
async def answer(request: Request, service: AnswerDep) -> AnswerResponse:
    return await service.answer(await _answer_request(request))


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, tags=["openai"])
async def chat_completions(body: ChatCompletionRequest, chat: ChatDep) -> Any:
    if body.stream:
        # Validate before the 200 starts streaming, so bad input still gets its 4xx.
        engine_request = await chat.engine_request(body)
        return StreamingResponse(chat.stream(body, engine_request), media_type="text/event-stream")
    return await chat.create(body)


@router.get("/v1/models", response_model=ModelList, tags=["openai"])
async def models(engine: EngineDep) -> ModelList:
    names = engine.model_names()
    known = engine.known_family()
    family = known.name if known else None
    mode = engine.logprobs_mode
    cards = [ModelCard(id=names[0], root=names[0], family=family, logprobs_mode=mode)]
    cards += [
        ModelCard(id=name, root=names[0], parent=names[0], family=family, logprobs_mode=mode)
        for name in names[1:]
    ]
    return ModelList(data=cards)


@router.get(
    "/v1/policy/info",
    response_model=PolicyInfo,
    tags=["zoom"],
    summary="The model family and the episode settings this policy serves",
)
async def policy_info(engine: EngineDep, service: AnswerDep) -> PolicyInfo:
    names = engine.model_names()
    known = engine.known_family()
    return PolicyInfo(
        model=names[0],
        family=known.name if known else None,
        convention=known.convention.value if known else None,
        served=service.served,
        adapters=names[1:],
    )


@router.get(
    "/v1/protocols",
    response_model=ProtocolList,
    tags=["zoom"],
    summary="The zoom protocols this policy speaks, with their conventions",
)
async def protocols(engine: EngineDep, service: AnswerDep) -> ProtocolList:
    served = resolve_protocol(service.served.protocol, engine.model_names()[:1])
    return ProtocolList(default=served.name, data=[p.info() for p in PROTOCOL_REGISTRY.values()])


@router.get("/v1/limits", response_model=EngineLimits, tags=["limits"])
async def limits(answer: AnswerDep) -> EngineLimits:
    """The limits shared with the engine, the trainer and the workers (docs/deploy.md)."""
    reason = await answer.engine.ready()
    if reason:  # the hf engine knows its processor's bounds once the model is loaded
        raise ServiceUnavailable(reason)
    return engine_limits(answer.engine, answer.settings)


@router.post("/v1/adapters", tags=["adapters"], summary="Load a LoRA adapter while serving")
async def load_adapter(
    body: LoadAdapterRequest, engine: EngineDep, settings: SettingsDep
) -> dict[str, str]:
    folder = confined_adapter_folder(body.path, settings.allowed_weight_roots())
    await engine.load_adapter(body.name, str(folder))
    return {"status": "loaded", "name": body.name}


@router.delete("/v1/adapters/{name}", tags=["adapters"], summary="Unload a LoRA adapter")
async def unload_adapter(name: str, engine: EngineDep) -> dict[str, str]:
    await engine.unload_adapter(name)
    return {"status": "unloaded", "name": name}


@router.get("/v1/weights", response_model=WeightsStatus, tags=["weights"])
async def get_weights(engine: EngineDep, settings: SettingsDep) -> WeightsStatus:
    """What the base model name serves, and whether this engine can load other weights."""
    return weights_status(engine, settings)


@router.post(
    "/v1/weights",
    response_model=WeightsStatus,
    tags=["weights"],
    summary="Serve the weights of a model folder (a full fine-tuning version) while serving",
)
async def load_weights(
    body: LoadWeightsRequest, engine: EngineDep, settings: SettingsDep
) -> WeightsStatus:
    folder = confined_model_folder(body.path, settings.allowed_weight_roots())
    await engine.reload_weights(str(folder), body.name)
    return weights_status(engine, settings)


@router.delete(
    "/v1/weights",
    response_model=WeightsStatus,
    tags=["weights"],
    summary="Go back to the served checkpoint's own weights",
)
async def reset_weights(engine: EngineDep, settings: SettingsDep) -> WeightsStatus:
    await engine.reload_weights(None, None)
    return weights_status(engine, settings)


# vLLM's runtime-LoRA endpoints, so a policy can stand in for vLLM as an upstream.
@router.post("/v1/load_lora_adapter", tags=["adapters"], include_in_schema=True)
async def load_lora_adapter(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    body = await _json(request)
    path = str(body.get("lora_path", ""))
    folder = confined_adapter_folder(path, settings.allowed_weight_roots(), param="lora_path")
    await engine.load_adapter(str(body.get("lora_name", "")), str(folder))
    return Response(f"Success: LoRA adapter '{body.get('lora_name')}' added successfully.")


@router.post("/v1/unload_lora_adapter", tags=["adapters"])
async def unload_lora_adapter(request: Request, engine: EngineDep) -> Response:
    body = await _json(request)
    await engine.unload_adapter(str(body.get("lora_name", "")))
    return Response(f"Success: LoRA adapter '{body.get('lora_name')}' removed successfully.")


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
