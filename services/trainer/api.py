"""HTTP routes of the trainer: thin adapters over ``RunManager``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from magsrl.proto.trainer import RunCreated, RunInfo, RunList
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.runs import RunManager, events_as_sse
from magsrl.trainer.weights_sync import check_full_finetune

router = APIRouter(prefix="/v1/runs", tags=["runs"])


def get_runs(request: Request) -> RunManager:
    return request.app.state.runs


RunsDep = Annotated[RunManager, Depends(get_runs)]


@router.post(
    "",
    status_code=202,
    response_model=RunCreated,
    summary="Start a training run (queued behind the one training, if any)",
)
async def create_run(config: RunConfig, runs: RunsDep) -> JSONResponse:
    await check_full_finetune(config, runs.settings, runs.http)  # never a failure at step 1
    run = await runs.submit(config)
    body = RunCreated(run_id=run.info.run_id, status=run.info.status, position=runs.position(run))
    return JSONResponse(body.model_dump(), status_code=202)


@router.get("", response_model=RunList, summary="Every run, newest first")
async def list_runs(runs: RunsDep) -> RunList:
    infos = sorted((r.info for r in runs.runs.values()), key=lambda i: -i.created_at)
    return RunList(runs=infos)


@router.get("/{run_id}", response_model=RunInfo, summary="Status, step, metrics, checkpoints")
async def get_run(run_id: str, runs: RunsDep) -> RunInfo:
    return runs.get(run_id).info


@router.get(
    "/{run_id}/events",
    summary="Server-sent events: every event so far, then one per step until the run ends",
    response_class=StreamingResponse,
)
async def run_events(run_id: str, runs: RunsDep) -> StreamingResponse:
    runs.get(run_id)  # a 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        async for event in runs.events(run_id):
            yield events_as_sse(event)

    return StreamingResponse(stream(), media_type="text/event-stream")


@router.post("/{run_id}/cancel", response_model=RunInfo, summary="Stop a run after its step")
async def cancel_run(run_id: str, runs: RunsDep) -> RunInfo:
    return runs.cancel(run_id).info
