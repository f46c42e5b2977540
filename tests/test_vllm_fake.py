"""Pins the fake vLLM upstream (tests/fakes/vllm_server.py) to vLLM's own behaviour. Each
test's docstring names the vLLM source it follows; if the fake drifts from vLLM, the openai
engine's tests against it stop meaning anything, so these fail first.

The parser pins are pure functions; the server pins run the fake in-process over the real
tiny model (the engine and end-to-end tests run it as a real process)."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from magsrl.zoom.families import FAMILIES, resized_size
from tests.fakes.hermes import HermesStream, extract_tool_calls
from tests.fakes.vllm_server import create_app, parse_args

CALL = '<tool_call>\n{"name": "zoom", "arguments": {"bbox_2d": [10,20,30,40]}}\n</tool_call>'
TOOLS = [
    {
        "type": "function",
        "function": {"name": "zoom", "parameters": {"type": "object", "properties": {}}},
    }
]


# ---- hermes parsing (pure) -------------------------------------------------------------
def test_hermes_content_is_only_the_text_before_the_first_call() -> None:
    """vllm/tool_parsers/hermes_tool_parser.py Hermes2ProToolParser.extract_tool_calls:
    content = model_output[:find('<tool_call>')]; text after a call is dropped, and the
    arguments are re-serialised by json.dumps (spaces after commas). The bug it pins: magsrl
    assumed content + calls was the whole turn."""
    content, calls = extract_tool_calls(f"I look closer. {CALL} then I answer.")
    assert content == "I look closer. "
    assert calls == [{"name": "zoom", "arguments": '{"bbox_2d": [10, 20, 30, 40]}'}]


def test_hermes_several_calls_and_empty_content() -> None:
    """Same function: every closed call is a call, in order; empty content becomes None."""
    content, calls = extract_tool_calls(f"{CALL}\n{CALL.replace('10', '11')}")
    assert content is None
    assert [json.loads(c["arguments"])["bbox_2d"][0] for c in calls] == [10, 11]


def test_hermes_unclosed_call_at_the_end_is_a_call() -> None:
    """Same function: the regex's second branch `<tool_call>(.*)` takes a call left open at
    the end of generation. The bug it pins: magsrl rejected what vLLM accepts."""
    content, calls = extract_tool_calls('ok <tool_call>\n{"name": "zoom", "arguments": {"a": 1}}')
    assert content == "ok "
    assert calls == [{"name": "zoom", "arguments": '{"a": 1}'}]


def test_hermes_a_broken_body_makes_everything_content() -> None:
    """Same function: any body that is not JSON (here, a call cut mid-JSON) turns the whole
    output into content with no calls."""
    text = f'{CALL} <tool_call>\n{{"name": "zoom", "argu'
    assert extract_tool_calls(text) == (text, [])


def test_hermes_streaming_holds_back_a_partial_tag_and_streams_verbatim_arguments() -> None:
    """Same file, extract_tool_calls_streaming / _extract_content / _extract_tool_args:
    content is held back while it could be the start of <tool_call>, stops at the first
    call, and arguments stream as the model's own text (no re-serialisation)."""
    stream = HermesStream()
    text = f"see <tool_call>{CALL[len('<tool_call>') :]} after"
    deltas = [stream.delta(text[: k + 1]) for k in range(len(text))]
    deltas = [d for d in deltas if d]
    content = "".join(d.get("content", "") for d in deltas)
    args = "".join(
        tc["function"].get("arguments", "") for d in deltas for tc in d.get("tool_calls", [])
    )
    assert content == "see "
    assert args == '{"bbox_2d": [10,20,30,40]}'
    assert any(
        tc.get("function", {}).get("name") == "zoom"
        for d in deltas
        for tc in d.get("tool_calls", [])
    )


# ---- the server, in-process ------------------------------------------------------------
def make_client(model: Path, *flags: str, lora: bool = False) -> TestClient:
    import os

    if lora:
        os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    try:
        args = parse_args(["--model", str(model), *flags])
        return TestClient(create_app(args))
    finally:
        os.environ.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)


@pytest.fixture(scope="module")
def raw(tiny_model_dir: Path) -> Iterator[TestClient]:
    with make_client(
        tiny_model_dir,
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--limit-mm-per-prompt",
        '{"image": 2, "video": 0}',
    ) as client:
        yield client


@pytest.fixture(scope="module")
def processed(tiny_model_dir: Path) -> Iterator[TestClient]:
    with make_client(tiny_model_dir, "--logprobs-mode", "processed_logprobs") as client:
        yield client


def chat(client: TestClient, script: str | None = None, **body: Any) -> Any:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    body.setdefault("max_tokens", 40)
    headers = {"X-Fake-Completion": json.dumps(script)} if script is not None else {}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def logprobs_of(resp: Any) -> list[float]:
    return [t["logprob"] for t in resp.json()["choices"][0]["logprobs"]["content"]]


def test_raw_logprobs_ignore_temperature(raw: TestClient) -> None:
    """vllm/v1/sample/sampler.py Sampler.forward: with the default --logprobs-mode
    raw_logprobs the log-probs are computed from the logits before temperature. The bug it
    pins (issue 13, point 2): the learner scores log_softmax(logits / T), so at T != 1 these
    are not the sampler's distribution."""
    hot = chat(raw, "hello there", temperature=1.0, logprobs=True)
    cold = chat(raw, "hello there", temperature=0.5, logprobs=True)
    assert logprobs_of(hot) == pytest.approx(logprobs_of(cold), abs=1e-6)


def test_processed_logprobs_follow_temperature(raw: TestClient, processed: TestClient) -> None:
    """Same file: processed_logprobs are taken after temperature and top-k/top-p, so at T=1
    they equal raw ones, and at T=0.5 the gap between the two most likely tokens doubles."""
    same = chat(processed, "hello there", temperature=1.0, logprobs=True)
    base = chat(raw, "hello there", temperature=1.0, logprobs=True)
    assert logprobs_of(same) == pytest.approx(logprobs_of(base), abs=1e-6)

    def gap(client: TestClient, t: float) -> float:
        resp = chat(client, "hello", temperature=t, logprobs=True, top_logprobs=5)
        tops = sorted(
            e["logprob"]
            for e in resp.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        )
        return tops[-1] - tops[-2]

    assert gap(processed, 0.5) == pytest.approx(2 * gap(processed, 1.0), rel=1e-3)
    assert gap(raw, 0.5) == pytest.approx(gap(raw, 1.0), rel=1e-3)


def test_top_logprobs_start_with_the_sampled_token(raw: TestClient) -> None:
    """vllm/entrypoints/openai/chat_completion/serving.py _create_chat_logprobs /
    _get_top_logprobs: each step's top list is the first `top_logprobs` entries of a dict
    that holds the sampled token first, then the top-k."""
    resp = chat(raw, "abc", logprobs=True, top_logprobs=3)
    for step in resp.json()["choices"][0]["logprobs"]["content"]:
        assert step["top_logprobs"][0]["token"] == step["token"]
        assert len(step["top_logprobs"]) <= 3


def test_return_token_ids_on_the_response(raw: TestClient, tiny_model_dir: Path) -> None:
    """vllm/entrypoints/openai/chat_completion/serving.py chat_completion_full_generator:
    with return_token_ids, prompt_token_ids on the response and token_ids on each choice;
    the token ids end with the end-of-turn token that vLLM's text leaves out."""
    resp = chat(raw, "hello there", return_token_ids=True).json()
    ids = resp["choices"][0]["token_ids"]
    tok = raw.app.state.fake.model.tokenizer
    assert tok.decode(ids[-1:]) == "<|im_end|>"
    assert tok.decode(ids[:-1]) == resp["choices"][0]["message"]["content"] == "hello there"
    assert resp["usage"]["prompt_tokens"] == len(resp["prompt_token_ids"])
    assert resp["usage"]["completion_tokens"] == len(ids)
    plain = chat(raw, "hello there").json()
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]


def sse(resp: Any) -> list[dict[str, Any]]:
    lines = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_stream_prompt_ids_on_the_first_chunk_and_token_ids_per_chunk(raw: TestClient) -> None:
    """vllm/entrypoints/openai/chat_completion/serving.py chat_completion_stream_generator:
    the first chunk of each choice (role, empty content) carries prompt_token_ids; every
    later chunk carries that step's token_ids, even when the parser holds its text back."""
    full = chat(raw, f"look {CALL} after", return_token_ids=True, tools=TOOLS).json()
    chunks = sse(
        chat(
            raw,
            f"look {CALL} after",
            return_token_ids=True,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0]["prompt_token_ids"] == full["prompt_token_ids"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    body = [c for c in chunks[1:] if c["choices"]]
    assert all("prompt_token_ids" not in c for c in body)
    assert [t for c in body for t in c["choices"][0]["token_ids"]] == full["choices"][0][
        "token_ids"
    ]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in body) == "look "
    assert body[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(
        full["choices"][0]["token_ids"]
    )


def test_tool_calls_response_shape(raw: TestClient) -> None:
    """vllm/entrypoints/openai/chat_completion/serving.py: with tools and tool_choice auto
    (the default when tools are given), content is the parser's, tool_calls carry
    chatcmpl-tool ids, and finish_reason is tool_calls."""
    choice = chat(raw, f"look {CALL} after", tools=TOOLS).json()["choices"][0]
    assert choice["message"]["content"] == "look "
    assert choice["message"]["tool_calls"][0]["id"].startswith("chatcmpl-tool-")
    assert choice["finish_reason"] == "tool_calls"
    none = chat(raw, f"look {CALL} after", tools=TOOLS, tool_choice="none").json()
    assert none["choices"][0]["message"]["content"] == f"look {CALL} after"


def test_error_envelope_for_an_unknown_model(raw: TestClient) -> None:
    """vllm/entrypoints/serve/utils/error_response.py create_error_response and
    vllm/entrypoints/openai/models/serving.py check_model: {"error": {message, type, param,
    code}} with the HTTP status as code."""
    resp = chat(raw, "x", model="nope")
    assert resp.status_code == 404
    assert resp.json() == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def data_url(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(*sizes: tuple[int, int]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(s)}} for s in sizes
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "what?"}]}]


def test_images_per_prompt_limit(raw: TestClient) -> None:
    """vllm/multimodal/processing.py BaseProcessingInfo.validate_num_items: over
    --limit-mm-per-prompt is a ValueError, i.e. a 400 BadRequestError "At most N image(s)
    may be provided in one prompt." (issue 13, point 7: long episodes hit it)."""
    resp = chat(raw, "x", messages=image_message((64, 64), (64, 64), (64, 64)))
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "message": "At most 2 image(s) may be provided in one prompt.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    assert chat(raw, "x", messages=image_message((64, 64), (64, 64))).status_code == 200


@pytest.mark.slow
def test_processor_resizes_under_the_configured_pixel_budget(tiny_model_dir: Path) -> None:
    """vLLM passes --mm-processor-kwargs to the HF processor of the model
    (vllm/model_executor/models/qwen2_5_vl.py Qwen2_5_VLProcessingInfo.get_hf_processor),
    whose smart_resize keeps each image within max_pixels. A 4000x3000 photo at the compose
    default 1,003,520 px is seen as 1148x840 (1230 image tokens), the frame the policy's
    frame_size must compute (issue 13, point 1)."""
    budget = 1_003_520
    with make_client(
        tiny_model_dir, "--mm-processor-kwargs", json.dumps({"max_pixels": budget})
    ) as client:
        resp = chat(client, "x", messages=image_message((4000, 3000)), return_token_ids=True)
        fake = client.app.state.fake
    pad = fake.model.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    tokens = resp.json()["prompt_token_ids"].count(pad)
    w, h = resized_size(4000, 3000, FAMILIES["qwen2_5_vl"], max_pixels=budget)
    assert (w, h) == (1148, 840) and w * h <= budget
    assert tokens == (w // 28) * (h // 28) == 1230
    assert math.isclose(w / h, 4 / 3, rel_tol=0.03)


def test_lora_routes_need_the_runtime_updating_variable(tiny_model_dir: Path) -> None:
    """vllm/entrypoints/serve/lora/api_router.py attach_router: without
    VLLM_ALLOW_RUNTIME_LORA_UPDATING the routes are not mounted at all (a plain 404)."""
    with make_client(tiny_model_dir, "--enable-lora") as client:
        resp = client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/x"})
    assert resp.status_code == 404


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from magsrl.models.loading import load_model

    torch.manual_seed(0)
    model = get_peft_model(
        load_model(tiny_model_dir),
        LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    out = tmp_path_factory.mktemp("adapter") / "v1"
    model.save_pretrained(out)
    return out


def test_lora_load_unload_bodies_and_errors(tiny_model_dir: Path, adapter: Path) -> None:
    """vllm/entrypoints/openai/models/serving.py load_lora_adapter / unload_lora_adapter and
    their _check_* helpers, vllm/exceptions.py LoRAAdapterNotFoundError: success is a 200
    plain-text sentence; a duplicate name or missing field is 400 InvalidUserInput; a path
    with no adapter is 404; unloading an unknown name is 404; /v1/models lists the adapter
    with the base as parent; a rank over --max-lora-rank fails the load (500, as vLLM's
    engine error). --max-loras bounds one batch, not the registry: a load past it evicts the
    oldest from the worker's cache (vllm/lora/worker_manager.py
    LRUCacheWorkerLoRAManager.add_adapter), and every name stays listed and usable."""
    with make_client(tiny_model_dir, "--enable-lora", "--max-lora-rank", "8", lora=True) as c:
        ok = c.post("/v1/load_lora_adapter", json={"lora_name": "v1", "lora_path": str(adapter)})
        assert ok.status_code == 200
        assert ok.text == "Success: LoRA adapter 'v1' added successfully."
        again = c.post("/v1/load_lora_adapter", json={"lora_name": "v1", "lora_path": str(adapter)})
        assert again.status_code == 400 and again.json()["error"]["type"] == "InvalidUserInput"
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "v2"}).status_code == 400
        missing = c.post("/v1/load_lora_adapter", json={"lora_name": "v3", "lora_path": "/no"})
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == (
            "Loading lora v3 failed: No adapter found for /no"
        )
        models = c.get("/v1/models").json()["data"]
        assert models[1]["id"] == "v1" and models[1]["parent"] == models[0]["id"]
        assert chat(c, "hi", model="v1").json()["model"] == "v1"
        gone = c.post("/v1/unload_lora_adapter", json={"lora_name": "v1"})
        assert gone.text == "Success: LoRA adapter 'v1' removed successfully."
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "v1"}).status_code == 404
        assert chat(c, "hi", model="v1").status_code == 404
    with make_client(tiny_model_dir, "--enable-lora", "--max-loras", "1", lora=True) as c:
        for name in ("a", "b"):
            body = {"lora_name": name, "lora_path": str(adapter)}
            assert c.post("/v1/load_lora_adapter", json=body).status_code == 200
        assert [m["id"] for m in c.get("/v1/models").json()["data"]][1:] == ["a", "b"]
        assert chat(c, "hi", model="a").status_code == chat(c, "hi", model="b").status_code == 200
    with make_client(tiny_model_dir, "--enable-lora", "--max-lora-rank", "2", lora=True) as c:
        big = c.post("/v1/load_lora_adapter", json={"lora_name": "v1", "lora_path": str(adapter)})
        assert big.status_code == 500 and "max_lora_rank" in big.json()["error"]["message"]


def test_detokenize_is_a_plain_decode(raw: TestClient) -> None:
    """vllm/entrypoints/serve/tokenize/serving.py create_detokenize: {"prompt": decode(tokens)}
    with special tokens kept, the text the openai engine rebuilds tool-call turns from."""
    ids = chat(raw, "a b", return_token_ids=True).json()["choices"][0]["token_ids"]
    assert raw.post("/detokenize", json={"tokens": ids}).json() == {"prompt": "a b<|im_end|>"}


def test_api_key_guards_only_the_v1_routes(tiny_model_dir: Path) -> None:
    """vllm/entrypoints/serve/middleware/authenticate.py: with --api-key (or VLLM_API_KEY)
    every /v1 path needs the bearer key and answers 401 {"error": "Unauthorized"} without
    it; /health and /detokenize stay open (compose's healthcheck relies on /health)."""
    with make_client(tiny_model_dir, "--api-key", "k") as client:
        denied = client.get("/v1/models")
        assert denied.status_code == 401 and denied.json() == {"error": "Unauthorized"}
        assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.post("/detokenize", json={"tokens": [64]}).status_code == 200
