"""The policy's OpenAI API over real HTTP, with the official `openai` SDK as the client: a real
`magsrl serve policy` process running the tiny model through the hf engine."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from magsrl.proto.tools import zoom_tool
from tests.conftest import RunningService, photo, png_bytes, start_policy

pytestmark = pytest.mark.slow


def data_url(name: str = "rocket") -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(photo(name))).decode()


def image_message(text: str = "What is in the image?", name: str = "rocket") -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(name)}},
            {"type": "text", "text": text},
        ],
    }


@pytest.fixture(scope="module")
def sdk(policy: RunningService) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{policy.url}/v1", api_key="unused", max_retries=0)


def still_serves(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert resp.choices[0].message.role == "assistant"


def test_models_lists_the_base(sdk: openai.OpenAI, tiny_model_dir: Path) -> None:
    ids = [m.id for m in sdk.models.list()]
    assert ids[0] == str(tiny_model_dir)


def test_chat_with_image_n_logprobs_and_token_ids(sdk: openai.OpenAI, tiny_model_dir: Path) -> None:
    resp = sdk.chat.completions.create(
        model=str(tiny_model_dir),
        messages=[image_message()],
        max_tokens=12,
        n=3,
        temperature=1.0,
        seed=7,
        logprobs=True,
        top_logprobs=2,
        extra_body={"return_token_ids": True},
    )
    assert len(resp.choices) == 3
    for choice in resp.choices:
        ids = choice.model_extra["token_ids"]
        assert 0 < len(ids) <= 12
        assert len(choice.logprobs.content) == len(ids)
        assert all(lp.logprob <= 0 for lp in choice.logprobs.content)
        assert all(len(lp.top_logprobs) == 2 for lp in choice.logprobs.content)
        assert choice.finish_reason in ("stop", "length", "tool_calls")
    prompt_ids = resp.model_extra["prompt_token_ids"]
    assert resp.usage.prompt_tokens == len(prompt_ids) > 64  # the image expanded into tokens
    assert resp.usage.completion_tokens == sum(
        len(c.model_extra["token_ids"]) for c in resp.choices
    )


def test_seed_makes_sampling_repeatable(sdk: openai.OpenAI, tiny_model_dir: Path) -> None:
    def sample() -> str:
        return (
            sdk.chat.completions.create(
                model=str(tiny_model_dir),
                messages=[{"role": "user", "content": "count"}],
                max_tokens=10,
                temperature=1.0,
                seed=123,
            )
            .choices[0]
            .message.content
            or ""
        )

    assert sample() == sample()


def test_streaming_matches_and_reports_usage(sdk: openai.OpenAI, tiny_model_dir: Path) -> None:
    stream = sdk.chat.completions.create(
        model=str(tiny_model_dir),
        messages=[image_message()],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish and finish[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    full = sdk.chat.completions.create(
        model=str(tiny_model_dir), messages=[image_message()], max_tokens=16, temperature=0
    )
    assert text == (full.choices[0].message.content or "")


def test_streaming_helper_of_the_sdk(sdk: openai.OpenAI, tiny_model_dir: Path) -> None:
    deltas = []
    with sdk.chat.completions.stream(
        model=str(tiny_model_dir),
        max_tokens=8,
        messages=[{"role": "user", "content": "hello"}],
        tools=[zoom_tool()],
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        snapshot = stream.current_completion_snapshot
    # (get_final_completion() refuses finish_reason "length", which a random model hits.)
    assert snapshot.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert "".join(deltas) == (snapshot.choices[0].message.content or "")


def test_tools_are_accepted(sdk: openai.OpenAI, tiny_model_dir: Path) -> None:
    resp = sdk.chat.completions.create(
        model=str(tiny_model_dir),
        messages=[image_message()],
        tools=[zoom_tool()],
        tool_choice="auto",
        max_tokens=8,
    )
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")


BAD_REQUESTS = [
    pytest.param({"model": "nope"}, 404, "does not exist", id="unknown-model"),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,aGVsbG8="},
                        }
                    ],
                }
            ]
        },
        400,
        "not a decodable image",
        id="undecodable-image",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
                    ],
                }
            ]
        },
        400,
        "base64",
        id="bad-base64",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ],
                }
            ]
        },
        400,
        "data URL",
        id="remote-url",
    ),
    pytest.param(
        {"messages": [image_message("a", "coffee")] * 4},
        400,
        "over the limit",
        id="too-many-images",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "word " * 3000}]},
        400,
        "context",
        id="prompt-too-long",
    ),
    pytest.param({"max_tokens": 100000}, 400, "context", id="max-tokens-too-large"),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]},
        422,
        None,
        id="unsupported-content-part",
    ),
    pytest.param(
        {
            "tools": [
                {"type": "function", "function": {"name": "zoom", "parameters": {"type": "string"}}}
            ]
        },
        400,
        "JSON Schema object",
        id="malformed-tool-schema",
    ),
    pytest.param(
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        422,
        None,
        id="malformed-tool-name",
    ),
    pytest.param({"tools": [{"type": "retrieval"}]}, 422, None, id="unknown-tool-type"),
    pytest.param(
        {"tool_choice": {"type": "function", "function": {"name": "zoom"}}},
        400,
        "no tools",
        id="tool-choice-without-tools",
    ),
    pytest.param({"messages": []}, 422, None, id="no-messages"),
    pytest.param({"n": 99}, 422, None, id="n-too-large"),
    pytest.param({"temperature": -1}, 422, None, id="negative-temperature"),
]


@pytest.mark.parametrize(("override", "status", "says"), BAD_REQUESTS)
def test_bad_requests(
    policy: RunningService,
    sdk: openai.OpenAI,
    tiny_model_dir: Path,
    override: dict,
    status: int,
    says: str | None,
) -> None:
    body = {
        "model": str(tiny_model_dir),
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        **override,
    }
    resp = httpx.post(f"{policy.url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"] and "Traceback" not in resp.text
    if says:
        assert says.lower() in error["message"].lower()
    still_serves_model(sdk, tiny_model_dir)


def test_wrong_content_type(policy: RunningService) -> None:
    resp = httpx.post(
        f"{policy.url}/v1/chat/completions",
        content=b"hello",
        headers={"Content-Type": "text/plain"},
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["message"]


def test_sdk_raises_typed_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        sdk.chat.completions.create(
            model=sdk.models.list().data[0].id,
            max_tokens=100000,
            messages=[{"role": "user", "content": "x"}],
        )


def still_serves_model(sdk: openai.OpenAI, model_dir: Path) -> None:
    resp = sdk.chat.completions.create(
        model=str(model_dir), max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.choices[0].message.role == "assistant"


# ---- LoRA adapters ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_dir(weights_root: Path, tiny_model_dir: Path) -> Path:
    """A real peft LoRA adapter for the tiny model, with non-zero B so it changes outputs,
    under the policy's MAGSRL_WEIGHTS_ROOTS (adapters load only from its roots)."""
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
    out = weights_root / "adapter" / "v1"
    model.save_pretrained(out)
    return out


def test_adapter_load_use_unload(
    policy: RunningService, sdk: openai.OpenAI, tiny_model_dir: Path, adapter_dir: Path
) -> None:
    url = policy.url
    resp = httpx.post(f"{url}/v1/adapters", json={"name": "run1-v1", "path": str(adapter_dir)})
    assert resp.status_code == 200, resp.text
    assert "run1-v1" in [m.id for m in sdk.models.list()]

    def greedy(model: str) -> list[int]:
        out = sdk.chat.completions.create(
            model=model,
            messages=[image_message()],
            max_tokens=12,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        return out.choices[0].model_extra["token_ids"]

    base, tuned = greedy(str(tiny_model_dir)), greedy("run1-v1")
    assert base != tuned  # the adapter is really applied, and only when asked for
    assert greedy(str(tiny_model_dir)) == base

    again = httpx.post(f"{url}/v1/adapters", json={"name": "run1-v1", "path": str(adapter_dir)})
    assert again.status_code == 400
    assert httpx.delete(f"{url}/v1/adapters/run1-v1").status_code == 200
    with pytest.raises(openai.NotFoundError):
        greedy("run1-v1")
    assert httpx.delete(f"{url}/v1/adapters/run1-v1").status_code == 404


def test_adapter_bad_path(policy: RunningService, weights_root: Path) -> None:
    """Inside the roots, a folder without an adapter is a 400 that says what one holds."""
    empty = weights_root / "not-an-adapter"
    empty.mkdir(exist_ok=True)
    resp = httpx.post(f"{policy.url}/v1/adapters", json={"name": "x", "path": str(empty)})
    assert resp.status_code == 400
    assert "adapter_config.json" in resp.json()["error"]["message"]


def test_adapter_paths_are_confined_to_the_roots(
    policy: RunningService, adapter_dir: Path, tmp_path: Path
) -> None:
    """Bug: POST /v1/adapters and vLLM's /v1/load_lora_adapter loaded a folder from anywhere
    on the policy's machine (whoever held the key chose what it read). A copy of a real
    adapter outside the roots, or a symlink inside a root that leads to it, is refused with
    one message, which names the roots and how to add one and not the path."""
    import shutil

    outside = tmp_path / "elsewhere"
    shutil.copytree(adapter_dir, outside)
    link = adapter_dir.parent / "link-out"
    link.symlink_to(outside)
    messages = set()
    for path in (str(outside), str(link), str(adapter_dir / ".." / ".." / "..")):
        for route, body in (
            ("/v1/adapters", {"name": "escape", "path": path}),
            ("/v1/load_lora_adapter", {"lora_name": "escape", "lora_path": path}),
        ):
            resp = httpx.post(f"{policy.url}{route}", json=body)
            assert resp.status_code == 400, (route, path, resp.text)
            error = resp.json()["error"]
            assert error["param"] in ("path", "lora_path") and path not in error["message"]
            messages.add(error["message"].replace("lora_path", "path"))
    assert len(messages) == 1, messages
    assert "MAGSRL_WEIGHTS_ROOTS" in next(iter(messages))
    assert "escape" not in [m["id"] for m in httpx.get(f"{policy.url}/v1/models").json()["data"]]
    ok = httpx.post(
        f"{policy.url}/v1/load_lora_adapter",
        json={"lora_name": "inside", "lora_path": str(adapter_dir)},
    )
    assert ok.status_code == 200, ok.text
    assert httpx.post(
        f"{policy.url}/v1/unload_lora_adapter", json={"lora_name": "inside"}
    ).is_success


# ---- the openai engine, against a second policy process ---------------------------------------
@pytest.fixture(scope="module")
def proxied(
    tmp_path_factory: pytest.TempPathFactory,
    policy: RunningService,
    magnifier: RunningService,
    tiny_model_dir: Path,
    weights_root: Path,
) -> Iterator[RunningService]:
    service = start_policy(
        tmp_path_factory.mktemp("proxied"),
        magnifier.url,
        str(tiny_model_dir),
        {
            "MAGSRL_ENGINE": "openai",
            "MAGSRL_UPSTREAM_URL": f"{policy.url}/v1",
            "MAGSRL_SERVED_MODEL_NAME": "policy-via-upstream",
            "MAGSRL_WEIGHTS_ROOTS": str(weights_root),
        },
    )
    yield service
    service.supervisor.stop()


def test_openai_engine_chat_matches_upstream(
    proxied: RunningService, sdk: openai.OpenAI, tiny_model_dir: Path
) -> None:
    front = openai.OpenAI(base_url=f"{proxied.url}/v1", api_key="unused", max_retries=0)
    assert front.models.list().data[0].id == "policy-via-upstream"
    kwargs = {
        "messages": [image_message()],
        "max_tokens": 10,
        "temperature": 0,
        "extra_body": {"return_token_ids": True},
    }
    via = front.chat.completions.create(model="policy-via-upstream", **kwargs)
    direct = sdk.chat.completions.create(model=str(tiny_model_dir), **kwargs)
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.choices[0].model_extra["token_ids"] == direct.choices[0].model_extra["token_ids"]
    stream = front.chat.completions.create(model="policy-via-upstream", stream=True, **kwargs)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == direct.choices[0].message.content


def test_openai_engine_adapters_and_answer(proxied: RunningService, adapter_dir: Path) -> None:
    resp = httpx.post(
        f"{proxied.url}/v1/adapters",
        json={"name": "proxied-v1", "path": str(adapter_dir)},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    models = httpx.get(f"{proxied.url}/v1/models").json()["data"]
    assert "proxied-v1" in [m["id"] for m in models]
    answer = httpx.post(
        f"{proxied.url}/answer",
        timeout=120,
        json={
            "image": {"b64": base64.b64encode(png_bytes(photo("coffee"))).decode()},
            "question": "What is this?",
            "model": "proxied-v1",
            "max_tokens": 8,
            "zoom": "off",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "proxied-v1"
    assert "queue" not in answer.json()["timing_ms"]  # its upstream's queue is not visible
    assert httpx.delete(f"{proxied.url}/v1/adapters/proxied-v1").status_code == 200
