"""The fake vLLM's serving logic (no FastAPI here): requests to the model and back in
vLLM's wire format, and its LoRA adapter registry. tests/fakes/vllm_server.py routes to it."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from tests.fakes.hermes import HermesStream, extract_tool_calls, tool_call_id
from tests.fakes.vllm_model import FakeModel, Output, Sampling


class FakeError(Exception):
    def __init__(
        self,
        message: str,
        err_type: str = "BadRequestError",
        status: int = 400,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.err_type, self.status, self.param = message, err_type, status, param


class ChatRequest(BaseModel):
    """The fields of vLLM's ChatCompletionRequest the fake honours; others are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None
    repetition_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    return_token_ids: bool = False  # vLLM extension: prompt_token_ids and token_ids
    skip_special_tokens: bool = True


class LoadLoRA(BaseModel):
    lora_name: str = ""
    lora_path: str = ""
    load_inplace: bool = False


class UnloadLoRA(BaseModel):
    lora_name: str = ""


class FakeVLLM:
    def __init__(self, args: argparse.Namespace) -> None:
        mm_kwargs = json.loads(args.mm_processor_kwargs or "{}")
        template = Path(args.chat_template).read_text() if args.chat_template else None
        self.model = FakeModel(
            Path(args.model),
            logprobs_mode=args.logprobs_mode,
            max_pixels=mm_kwargs.get("max_pixels"),
            min_pixels=mm_kwargs.get("min_pixels"),
            chat_template=template,
        )
        self.args = args
        self.name = args.served_model_name or args.model
        self.max_model_len = args.max_model_len or self.model.max_model_len
        self.limits = {"image": 999, "video": 999, **json.loads(args.limit_mm_per_prompt or "{}")}
        self.loras: dict[str, str] = {}
        self.scripts: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.lock = asyncio.Lock()

    # ---- requests -------------------------------------------------------------------
    def adapter_for(self, model: str | None) -> str | None:
        if not model or model == self.name:
            return None
        if model in self.loras:
            return model
        # vllm/entrypoints/openai/models/serving.py check_model
        raise FakeError(f"The model `{model}` does not exist.", "NotFoundError", 404, "model")

    def conversation(self, req: ChatRequest) -> tuple[list[dict[str, Any]], list[Image.Image]]:
        images: list[Image.Image] = []
        out = []
        for message in req.messages:
            message = dict(message)
            content = message.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image_url":
                        images.append(_decode_image(part["image_url"]["url"]))
                        parts.append({"type": "image"})
                    else:
                        parts.append(part)
                message["content"] = parts
            # vllm/entrypoints/chat_utils.py: tool call arguments reach the template parsed.
            for call in message.get("tool_calls") or []:
                args = call.get("function", {}).get("arguments")
                if isinstance(args, str):
                    call["function"]["arguments"] = json.loads(args)
            out.append(message)
        # vllm/multimodal/processing.py BaseProcessingInfo.validate_num_items
        if len(images) > self.limits["image"]:
            limit = self.limits["image"]
            raise FakeError(f"At most {limit} image(s) may be provided in one prompt.")
        return out, images

    def sampling(self, req: ChatRequest, prompt_len: int, with_parser: bool) -> Sampling:
        max_tokens = req.max_completion_tokens or req.max_tokens
        room = self.max_model_len - prompt_len
        if max_tokens is None:
            max_tokens = room
        if max_tokens > room:
            raise FakeError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_len + max_tokens} tokens ({prompt_len} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                "completion.",
                param="max_tokens",
            )
        if req.top_logprobs and not req.logprobs:
            raise FakeError("when using `top_logprobs`, `logprobs` must be set to true.")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if not req.top_k else req.top_k,
            repetition_penalty=req.repetition_penalty or 1.0,
            seed=req.seed,
            n=req.n,
            stop=stop,
            top_logprobs=req.top_logprobs or 0,
            # hermes_tool_parser.py adjust_request: special tokens are kept when parsing tools
            skip_special_tokens=False if with_parser else req.skip_special_tokens,
        )

    async def chat(self, req: ChatRequest, header_script: str | None) -> Any:
        adapter = self.adapter_for(req.model)
        record = req.model_dump(exclude={"messages"})
        record["roles"] = [m.get("role") for m in req.messages]
        record["images"] = _image_digests(req.messages)  # what each image arrived as
        self.requests.append(record)
        messages, images = self.conversation(req)
        tool_choice = req.tool_choice or ("auto" if req.tools else "none")
        if tool_choice not in ("auto", "none"):
            raise FakeError("the fake supports tool_choice auto and none only", param="tool_choice")
        parser = bool(req.tools) and tool_choice == "auto" and self.args.enable_auto_tool_choice
        prompt = self.model.render(messages, req.tools)
        inputs = self.model.encode(prompt, images)
        prompt_ids = inputs["input_ids"][0].tolist()
        s = self.sampling(req, len(prompt_ids), parser)
        scripts: list[str | None] = []
        for _ in range(req.n):
            if header_script is not None:
                scripts.append(header_script)
            else:
                scripts.append(self.scripts.popleft() if self.scripts else None)
        async with self.lock:
            outputs = await asyncio.get_running_loop().run_in_executor(
                None, self._run, inputs, s, scripts, adapter
            )
        name = adapter or self.name
        if req.stream:
            return self._stream(req, name, prompt_ids, outputs, parser)
        return self._full(req, name, prompt_ids, outputs, parser)

    def _run(self, inputs: Any, s: Sampling, scripts: list[str | None], adapter: str | None) -> Any:
        with self.model.use(adapter):
            return self.model.run(inputs, s, scripts)

    def _logprobs(self, out: Output, req: ChatRequest, start: int, end: int) -> Any:
        if not req.logprobs:
            return None
        tok = self.model.tokenizer

        def entry(token_id: int, lp: float) -> dict[str, Any]:
            text = tok.decode([token_id])
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8", "replace"))}

        content = []
        for k in range(start, end):
            token, lp = out.top[k][0]
            tops = [entry(t, v) for t, v in out.top[k][: req.top_logprobs or 0]]
            content.append({**entry(token, lp), "top_logprobs": tops})
        return {"content": content}

    def _full(
        self,
        req: ChatRequest,
        name: str,
        prompt_ids: list[int],
        outputs: list[Output],
        parser: bool,
    ) -> dict[str, Any]:
        # vllm/entrypoints/openai/chat_completion/serving.py chat_completion_full_generator
        choices = []
        for i, out in enumerate(outputs):
            content, calls = extract_tool_calls(out.text) if parser else (out.text, [])
            message: dict[str, Any] = {"role": "assistant", "content": content}
            finish = out.finish_reason
            if calls:
                message["tool_calls"] = [
                    {"id": tool_call_id(), "type": "function", "function": c} for c in calls
                ]
                finish = "tool_calls"
            choice = {
                "index": i,
                "message": message,
                "logprobs": self._logprobs(out, req, 0, len(out.token_ids)),
                "finish_reason": finish,
                "stop_reason": out.stop_reason,
            }
            if req.return_token_ids:
                choice["token_ids"] = out.token_ids
            choices.append(choice)
        completion = sum(len(o.token_ids) for o in outputs)
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion,
            },
        }
        if req.return_token_ids:
            body["prompt_token_ids"] = prompt_ids
        return body

    async def _stream(
        self,
        req: ChatRequest,
        name: str,
        prompt_ids: list[int],
        outputs: list[Output],
        parser: bool,
    ) -> AsyncIterator[str]:
        # vllm/entrypoints/openai/chat_completion/serving.py chat_completion_stream_generator
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> str:
            body = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [choice] if choice else [],
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n"

        for i in range(len(outputs)):  # the role chunk of every choice carries the prompt ids
            first = {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            yield chunk(first, **({"prompt_token_ids": prompt_ids} if req.return_token_ids else {}))
        skip = False if parser else req.skip_special_tokens
        for i, out in enumerate(outputs):
            hermes, sent = HermesStream(), ""
            for k, text in enumerate(self._prefixes(out, skip)):
                last = k == len(out.token_ids) - 1
                if parser:
                    delta = hermes.delta(text)
                else:
                    delta = {"content": text[len(sent) :]} if len(text) > len(sent) else None
                sent = text
                if delta is None and not last and not req.logprobs and not req.return_token_ids:
                    continue
                choice: dict[str, Any] = {
                    "index": i,
                    "delta": delta or {},
                    "logprobs": self._logprobs(out, req, k, k + 1),
                    "finish_reason": None,
                }
                if last:
                    finish = out.finish_reason
                    if hermes.called and finish == "stop":
                        finish = "tool_calls"
                    choice.update(finish_reason=finish, stop_reason=out.stop_reason)
                if req.return_token_ids:
                    choice["token_ids"] = [out.token_ids[k]]
                yield chunk(choice)
        if (req.stream_options or {}).get("include_usage"):
            completion = sum(len(o.token_ids) for o in outputs)
            usage = {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion,
            }
            yield chunk(None, usage=usage)
        yield "data: [DONE]\n\n"

    def _prefixes(self, out: Output, skip: bool) -> list[str]:
        """The choice's text as it stood after each token, as vLLM's incremental
        detokenizer hands it out: never past the final text (which leaves out the stop
        token), and held back while a UTF-8 character is incomplete."""
        texts, held = [], ""
        for k in range(len(out.token_ids)):
            text = self.model.tokenizer.decode(out.token_ids[: k + 1], skip_special_tokens=skip)
            text = text[: len(out.text)]
            held = held if text.endswith("\ufffd") else text
            texts.append(held)
        if texts:
            texts[-1] = out.text
        return texts

    # ---- LoRA -----------------------------------------------------------------------
    async def load_lora(self, req: LoadLoRA) -> str:
        # vllm/entrypoints/openai/models/serving.py load_lora_adapter and its checks
        if not req.lora_name or not req.lora_path:
            raise FakeError(
                "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
            )
        if not req.load_inplace and req.lora_name in self.loras:
            raise FakeError(
                f"The lora adapter '{req.lora_name}' has already been loaded. If you want to "
                "load the adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        if not self.args.enable_lora:
            raise FakeError(
                "LoRA is not enabled. Use --enable-lora to enable LoRA.", "InternalServerError", 500
            )
        path = Path(req.lora_path)
        if not (path / "adapter_config.json").is_file():  # vllm/exceptions.py
            raise FakeError(
                f"Loading lora {req.lora_name} failed: No adapter found for {req.lora_path}",
                "NotFoundError",
                404,
            )
        rank = self.model.lora_rank(path)
        if rank > self.args.max_lora_rank:
            raise FakeError(
                f"LoRA rank {rank} is greater than max_lora_rank {self.args.max_lora_rank}.",
                "InternalServerError",
                500,
            )
        async with self.lock:
            await asyncio.get_running_loop().run_in_executor(
                None, self.model.add_lora, req.lora_name, path
            )
        self.loras[req.lora_name] = req.lora_path
        return f"Success: LoRA adapter '{req.lora_name}' added successfully."

    async def unload_lora(self, req: UnloadLoRA) -> str:
        if not req.lora_name:
            raise FakeError(
                "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput"
            )
        if req.lora_name not in self.loras:
            raise FakeError(
                f"The lora adapter '{req.lora_name}' cannot be found.", "NotFoundError", 404
            )
        remaining = [n for n in self.loras if n != req.lora_name]
        async with self.lock:
            self.model.remove_lora(req.lora_name, remaining)
        del self.loras[req.lora_name]
        return f"Success: LoRA adapter '{req.lora_name}' removed successfully."


def _decode_image(url: str) -> Image.Image:
    if not url.startswith("data:"):
        raise FakeError("the fake takes data URLs only")
    data = base64.b64decode(url.split(",", 1)[1])
    return Image.open(io.BytesIO(data)).convert("RGB")


def _image_digests(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The mime type and sha256 of the bytes of each data-URL image, in order."""
    out = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                header, _, payload = str(part["image_url"]["url"]).partition(",")
                data = base64.b64decode(payload)
                mime = header.removeprefix("data:").split(";")[0]
                out.append({"mime": mime, "sha256": hashlib.sha256(data).hexdigest()})
    return out
