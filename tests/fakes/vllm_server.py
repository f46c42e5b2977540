"""A vLLM-faithful OpenAI-compatible server for tests: the wire behaviour of ``vllm serve``
(the pinned release in compose.yaml) over a real transformers checkpoint on CPU, so the
policy's ``openai`` engine is tested against vLLM's semantics, not against magsrl's own.

Run: ``python -m tests.fakes.vllm_server --model DIR --port P [vllm serve flags]``

What it copies, each pinned by tests/test_vllm_fake.py with the vLLM source it follows
(docs/policy.md lists them): the hermes tool parser; ``--logprobs-mode``; ``return_token_ids``
(``prompt_token_ids`` on the response and on the first chunk, ``token_ids`` per choice and
per chunk); runtime LoRA loading behind ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``; the
processor's resize under ``--mm-processor-kwargs '{"max_pixels": N}'``;
``--limit-mm-per-prompt``; ``/detokenize``; the error envelope
``{"error": {"message", "type", "param", "code"}}``.

Scripted mode, for deterministic episodes: ``POST /fake/script {"completions": [...]}``
queues completion texts, and each choice of a later chat request takes the next one (or the
``X-Fake-Completion`` header, a JSON string, scripts one request). Scripted text is tokenised
and scored by the real model, so its token ids and log-probs are real.
"""

from __future__ import annotations

import argparse
import json
import os
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.fakes.vllm_serving import ChatRequest, FakeError, FakeVLLM, LoadLoRA, UnloadLoRA


def error_response(exc: FakeError) -> JSONResponse:
    # vllm/entrypoints/serve/utils/error_response.py create_error_response: ErrorResponse
    # (error=ErrorInfo(message, type, param, code)), the HTTP status repeated as ``code``.
    body = {
        "error": {
            "message": exc.message,
            "type": exc.err_type,
            "param": exc.param,
            "code": exc.status,
        }
    }
    return JSONResponse(body, status_code=exc.status)


def create_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    fake = FakeVLLM(args)
    app.state.fake = fake
    api_key = args.api_key or os.environ.get("VLLM_API_KEY")

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        # vllm/entrypoints/serve/middleware/authenticate.py: only /v1 paths need the key
        guarded = api_key and request.url.path.startswith("/v1")
        if guarded and request.headers.get("Authorization") != f"Bearer {api_key}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(FakeError)
    async def fake_error(_: Request, exc: FakeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(FakeError(str(exc.errors()[:3])))

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=HTTPStatus.OK)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        base = {
            "id": fake.name,
            "object": "model",
            "owned_by": "vllm",
            "root": args.model,
            "parent": None,
            "max_model_len": fake.max_model_len,
        }
        loras = [
            {"id": n, "object": "model", "owned_by": "vllm", "root": p, "parent": fake.name}
            for n, p in fake.loras.items()
        ]
        return {"object": "list", "data": [base, *loras]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Any:
        header = request.headers.get("X-Fake-Completion")
        out = await fake.chat(req, json.loads(header) if header else None)
        return (
            out if isinstance(out, dict) else StreamingResponse(out, media_type="text/event-stream")
        )

    # An upstream without /detokenize (another magsrl policy) is --no-detokenize.
    @app.post("/detokenize")
    async def detokenize(body: dict[str, Any]) -> dict[str, Any]:
        # vllm/entrypoints/serve/tokenize/serving.py create_detokenize: a plain decode
        if args.no_detokenize:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        fake.adapter_for(body.get("model"))
        return {"prompt": fake.model.tokenizer.decode(body.get("tokens") or [])}

    # vllm/entrypoints/serve/lora/api_router.py: the routes exist only when the variable is set
    if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true"):

        @app.post("/v1/load_lora_adapter")
        async def load(req: LoadLoRA) -> Response:
            return Response(await fake.load_lora(req), status_code=200)

        @app.post("/v1/unload_lora_adapter")
        async def unload(req: UnloadLoRA) -> Response:
            return Response(await fake.unload_lora(req), status_code=200)

    @app.post("/fake/script")
    async def script(body: dict[str, Any]) -> dict[str, Any]:
        fake.scripts.extend(body.get("completions") or [])
        return {"queued": len(fake.scripts)}

    @app.get("/fake/requests")
    async def requests() -> list[dict[str, Any]]:
        return fake.requests

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_tag", nargs="?", help="the model, positional as in `vllm serve`")
    p.add_argument("--model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--served-model-name")
    p.add_argument("--api-key")
    p.add_argument(
        "--logprobs-mode", default="raw_logprobs", choices=["raw_logprobs", "processed_logprobs"]
    )
    p.add_argument("--mm-processor-kwargs")
    p.add_argument("--limit-mm-per-prompt")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--chat-template")
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument("--tool-call-parser", choices=["hermes"])
    p.add_argument("--enable-lora", action="store_true")
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument("--max-lora-rank", type=int, default=16)
    p.add_argument("--generation-config", default="vllm", choices=["vllm"])
    p.add_argument("--no-detokenize", action="store_true", help="test only: no /detokenize")
    args = p.parse_args(argv)
    args.model = args.model or args.model_tag
    if not args.model:
        p.error("a model is required (positional or --model)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    uvicorn.run(create_app(args), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
