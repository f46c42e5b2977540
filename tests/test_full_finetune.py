"""Full fine-tuning that runs (issue 13, point 6): fp32 master weights under bf16 compute, the
vision tower frozen by default, each version published as a whole model that the policy
swaps in (``/v1/weights``, confined to the trainer's runs folder), and a refusal at submit
time where the policy's engine cannot load weights (the openai engine, vLLM).

The learner tests are text-only rollouts on the tiny model (CPU; CPU autocast runs bf16).
The end-to-end tests start real policy processes and talk to them over HTTP.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch

from magsrl.common.errors import BadRequest
from magsrl.policy.weights import confined_model_folder
from magsrl.proto.rollout import RolloutResult, Segment
from magsrl.trainer.learner import Learner
from magsrl.trainer.learner_batch import sequence_logprobs
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.weights_sync import full_finetune_refusal, prune_versions
from tests.conftest import RunningService, start_service

API_KEY = "full-ft-key"
PROMPT, COMPLETION = 12, 16


def run_config(lora: dict[str, object] | None = None, lr: float = 1e-5) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "full",
            "model": "tiny",
            "dataset": "unused",
            "grpo": {
                "group_size": 2,
                "prompts_per_step": 2,
                "micro_batch_size": 4,
                "learning_rate": lr,
            },
            "lora": {"enabled": False, "dropout": 0.0, **(lora or {})},
        }
    )


def text_results(n: int = 4) -> list[RolloutResult]:
    """Rollouts with a random prompt (mask 0) and a random completion (mask 1): enough for a
    loss with gradients on every language-model weight."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for k in range(n):
        prompt = torch.randint(10, 200, (PROMPT,), generator=generator).tolist()
        completion = torch.randint(10, 200, (COMPLETION,), generator=generator).tolist()
        out.append(
            RolloutResult(
                job_id=f"full:0:{k // 2}:{k % 2}",
                run_id="full",
                step=0,
                sample_index=k // 2,
                group_index=k % 2,
                version=0,
                policy_model=None,
                worker="test",
                segments=[
                    Segment(ids=prompt, mask=0),
                    Segment(ids=completion, mask=1, logprobs=[-5.0] * COMPLETION),
                ],
                images=[],
                reward=0.0,
                components={},
                answer="",
                correct=False,
                zooms=0,
                zoom_errors=0,
                rounds=1,
                completion_tokens=COMPLETION,
                elapsed_ms=0.0,
            )
        )
    return out


ADVANTAGES = torch.tensor([1.0, -1.0, 1.0, -1.0])


def moved_share(learner: Learner, steps: int) -> float:
    """The share of trainable weight elements that changed over ``steps`` steps."""
    before = {n: t.detach().clone() for n, t in learner.trainable_state().items()}
    for _ in range(steps):
        learner.step(text_results(), ADVANTAGES)
    after = learner.trainable_state()
    moved = sum(int((after[n] != v).sum()) for n, v in before.items())
    return moved / sum(v.numel() for v in before.values())


# ---- fp32 master weights ---------------------------------------------------------------------
@pytest.mark.slow
def test_small_updates_survive_bf16_compute(tiny_model_dir: Path) -> None:
    """Bug: full fine-tuning held weights and AdamW state in bf16 (the compute dtype on a GPU),
    where a step at lr 1e-5 rounds away for most weights: 10 steps moved 15% of them. With
    fp32 master weights under bf16 autocast every weight moves, as in fp32. The same learner
    with its weights cast to bf16 (the old behaviour) shows the test can tell them apart."""
    learner = Learner(
        tiny_model_dir, run_config(), device="cpu", dtype=torch.bfloat16, old_logps="learner"
    )
    assert learner.autocast
    assert {p.dtype for p in learner.trainable_parameters()} == {torch.float32}
    assert moved_share(learner, 10) > 0.99
    state = next(iter(learner.optimizer.state.values()))
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32

    old = Learner(
        tiny_model_dir, run_config(), device="cpu", dtype=torch.bfloat16, old_logps="learner"
    )
    old.model.to(torch.bfloat16)
    old.autocast = False
    old.optimizer = torch.optim.AdamW(old.trainable_parameters(), lr=1e-5)
    assert moved_share(old, 10) < 0.5  # measured: 0.16


def test_bf16_compute_is_autocast_over_fp32_weights(tiny_model_dir: Path) -> None:
    """The forward runs in the compute dtype (bf16 matmuls) while the weights stay fp32, and
    the log-probs it gives stay float32 and close to an fp32 forward's."""
    learner = Learner(tiny_model_dir, run_config(), device="cpu", dtype=torch.bfloat16)
    batch = learner.collate(text_results(2))
    seen: list[torch.dtype] = []
    head = learner.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        logps = learner.logprobs(batch)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16] and logps.dtype == torch.float32
    exact = sequence_logprobs(
        learner.model, batch, 1.0, pad_id=learner.pad_id, placeholder_ids=learner.placeholder_ids
    )
    mask = batch.completion_mask.bool()
    assert (logps - exact).abs()[mask].mean() < 5e-2


# ---- the vision tower ------------------------------------------------------------------------
def _names(learner: Learner) -> list[str]:
    return [n for n, p in learner.model.named_parameters() if p.requires_grad]


def test_vision_tower_is_frozen_unless_asked(tiny_model_dir: Path) -> None:
    """Bug: full fine-tuning trained the vision tower with no way to freeze it. It is frozen
    by default (and out of the optimizer); lora.train_vision trains it. LoRA adapts only the
    language model by default, and the vision tower's linear layers with train_vision."""
    frozen = Learner(tiny_model_dir, run_config(), device="cpu")
    trainable = _names(frozen)
    assert trainable and not any(".visual." in n for n in trainable)
    optimised = {id(p) for group in frozen.optimizer.param_groups for p in group["params"]}
    visual = [p for n, p in frozen.model.named_parameters() if ".visual." in n]
    assert visual and not any(id(p) in optimised for p in visual)

    both = Learner(tiny_model_dir, run_config({"train_vision": True}), device="cpu")
    assert any(".visual." in n for n in _names(both))
    assert len(_names(both)) == sum(1 for _ in both.model.parameters())

    lora = Learner(tiny_model_dir, run_config({"enabled": True}), device="cpu")
    assert not any(".visual." in n for n in _names(lora))
    lora_vision = Learner(
        tiny_model_dir, run_config({"enabled": True, "train_vision": True}), device="cpu"
    )
    assert any(".visual." in n and "lora_" in n for n in _names(lora_vision))


# ---- where versions may be loaded from -------------------------------------------------------
def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_weight_paths_are_confined_to_the_roots(tmp_path: Path) -> None:
    """POST /v1/weights would otherwise load any folder on the policy's machine: only model
    folders strictly inside a root are accepted, a symlink out of a root is judged by its
    target, relative paths and folders without a model are refused."""
    root = (tmp_path / "runs").resolve()
    inside = _model_folder(root / "run-1" / "adapters" / "v1")
    outside = _model_folder(tmp_path / "elsewhere")
    assert confined_model_folder(str(inside), [root]) == inside
    link = root / "run-2"
    link.symlink_to(outside)
    for path in (str(outside), str(link), "runs/run-1/adapters/v1", str(root), str(root / "x")):
        with pytest.raises(BadRequest):
            confined_model_folder(path, [root])
    with pytest.raises(BadRequest, match="MAGSRL_WEIGHTS_ROOTS"):
        confined_model_folder(str(root / ".." / "elsewhere"), [root])


def test_refusal_says_why_before_the_run_starts(tmp_path: Path) -> None:
    """A full fine-tuning run failed at its first publish; now the policy's answer to
    GET /v1/weights decides at submit: an engine that cannot reload, a policy without the
    route, or a run folder outside its roots is refused with the reason and the fix."""
    runs = tmp_path / "runs"
    ok = {"reloadable": True, "roots": [str(runs.resolve())]}
    assert full_finetune_refusal(ok, runs) is None
    vllm = {"reloadable": False, "reason": "the vLLM release ...", "roots": []}
    assert "lora.enabled: true" in (full_finetune_refusal(None, runs) or "")
    assert "vLLM" in (full_finetune_refusal(vllm, runs) or "")
    assert "MAGSRL_RUNS_DIR" in (full_finetune_refusal(ok, tmp_path / "other") or "")


def test_old_versions_are_pruned(tmp_path: Path) -> None:
    """Each full version is a whole model: the ones before the served version are deleted."""
    for k in range(4):
        (tmp_path / "adapters" / f"v{k}").mkdir(parents=True)
    prune_versions(tmp_path, keep=3)
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["v3"]


# ---- the policy serves each version (real processes) -----------------------------------------
@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fullft-runs").resolve()


@pytest.fixture(scope="module")
def hf_policy(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, runs_dir: Path
) -> RunningService:
    env = {
        "MAGSRL_POLICY_MODEL": str(tiny_model_dir),
        "MAGSRL_RUNS_DIR": str(runs_dir),
        "MAGSRL_TORCH_THREADS": "1",
    }
    service = start_service("policy", tmp_path_factory.mktemp("fullft-policy"), env, API_KEY)
    yield service
    service.supervisor.stop()


def _chat(client: httpx.Client, model: str) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Describe the sign."}],
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 3,
        "logprobs": True,
    }
    return client.post("/v1/chat/completions", json=body)


def _sampled(response: httpx.Response) -> list[float]:
    """The sampled tokens' log-probs: a fingerprint of the weights that sampled them."""
    return [t["logprob"] for t in response.json()["choices"][0]["logprobs"]["content"]]


@pytest.mark.slow
def test_policy_serves_each_full_version(
    hf_policy: RunningService, tiny_model_dir: Path, runs_dir: Path, tmp_path: Path
) -> None:
    """End to end on CPU: a full fine-tuning step, the version saved (safetensors, atomic),
    POST /v1/weights swaps it in and serves it as <run>-v1 with log-probs that differ from
    the base's; the next version replaces it (v1 is then unknown); DELETE goes back to the
    base. The route needs the key, and refuses paths outside the runs folder."""
    learner = Learner(tiny_model_dir, run_config(lr=1e-2), device="cpu", old_logps="learner")
    with hf_policy.client() as client:
        status = client.get("/v1/weights").json()
        assert status["reloadable"] and status["name"] is None
        assert status["roots"][0] == str(runs_dir)
        base = _sampled(_chat(client, status["model"]))

        learner.step(text_results(), ADVANTAGES)
        v1 = learner.save_adapter(runs_dir / "run" / "adapters" / "v1")
        assert any(v1.glob("*.safetensors"))
        assert [p.name for p in v1.parent.iterdir()] == ["v1"]  # no temp folder left
        resp = client.post("/v1/weights", json={"path": str(v1), "name": "run-v1"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["name"] == "run-v1" and resp.json()["path"] == str(v1)
        assert "run-v1" in [m["id"] for m in client.get("/v1/models").json()["data"]]
        served = _chat(client, "run-v1")
        assert served.status_code == 200, served.text
        trained = _sampled(served)
        assert trained != base

        learner.step(text_results(), ADVANTAGES)
        v2 = learner.save_adapter(runs_dir / "run" / "adapters" / "v2")
        assert client.post("/v1/weights", json={"path": str(v2), "name": "run-v2"}).is_success
        assert _chat(client, "run-v1").status_code == 404  # a stale version is refused
        assert _chat(client, "run-v2").status_code == 200
        assert client.delete("/v1/adapters/run-v2").status_code == 400  # not an adapter
        taken = client.post("/v1/adapters", json={"name": "run-v2", "path": str(v2)})
        assert taken.status_code == 400 and "no peft adapter" in taken.text  # a whole model

        outside = learner.save_adapter(tmp_path / "v3")
        refused = client.post("/v1/weights", json={"path": str(outside), "name": "run-v3"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "path"
        assert client.get("/v1/weights").json()["name"] == "run-v2"  # unchanged

        reset = client.delete("/v1/weights")
        assert reset.status_code == 200 and reset.json()["name"] is None
        again = _sampled(_chat(client, status["model"]))
        assert again == pytest.approx(base, abs=1e-4)
    anonymous = httpx.post(f"{hf_policy.url}/v1/weights", json={"path": str(v2)})
    assert anonymous.status_code == 401


@pytest.mark.slow
def test_openai_engine_full_run_is_refused_at_submit(
    tmp_path: Path, redis_url: str, runs_dir: Path, hf_policy: RunningService, tiny_model_dir: Path
) -> None:
    """Bug: a full fine-tuning run was accepted and failed at its first publish, because
    neither engine took a model folder. Against a policy on the openai engine (vLLM), the
    trainer now refuses it at POST /v1/runs with a 400 that says why and what to do, and
    no run is created."""
    from fastapi.testclient import TestClient

    from magsrl.trainer.app import create_app
    from magsrl.trainer.config import TrainerSettings

    policy = start_service(
        "policy",
        tmp_path,
        {
            "MAGSRL_ENGINE": "openai",
            "MAGSRL_POLICY_MODEL": str(tiny_model_dir),
            "MAGSRL_UPSTREAM_URL": f"{hf_policy.url}/v1",  # stands in for vLLM here
            "MAGSRL_UPSTREAM_API_KEY": API_KEY,
            "MAGSRL_RUNS_DIR": str(runs_dir),
        },
    )
    try:
        with httpx.Client(base_url=policy.url) as client:
            status = client.get("/v1/weights").json()
            assert not status["reloadable"] and "LoRA" in status["reason"]
            assert client.post("/v1/weights", json={"path": str(runs_dir)}).status_code == 400
        dataset = Path(__file__).parents[1] / "examples/data/synth-tiny/data.curriculum.jsonl"
        settings = TrainerSettings(
            policy_url=policy.url, redis_url=redis_url, runs_dir=tmp_path / "runs"
        )
        config = run_config().model_dump() | {"dataset": str(dataset)}
        with TestClient(create_app(settings)) as trainer:
            refused = trainer.post("/v1/runs", json=config)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == "lora.enabled"
            assert (
                "development mode" in error["message"] and "lora.enabled: true" in error["message"]
            )
            assert trainer.get("/v1/runs").json()["runs"] == []
    finally:
        policy.supervisor.stop()


def test_policy_unreachable_at_submit_is_503(tmp_path: Path) -> None:
    """A full run submitted while the policy is down gets 503 (try again), not a run that
    fails later."""
    from magsrl.common.errors import ServiceUnavailable
    from magsrl.trainer.config import TrainerSettings
    from magsrl.trainer.weights_sync import check_full_finetune

    settings = TrainerSettings(policy_url="http://127.0.0.1:9", runs_dir=tmp_path)

    async def submit() -> None:
        async with httpx.AsyncClient() as http:
            await check_full_finetune(run_config({"enabled": True}), settings, http)  # no call
            await check_full_finetune(run_config(), settings, http)

    with pytest.raises(ServiceUnavailable, match="unreachable"):
        asyncio.run(submit())


# ---- the example, through `magsrl up --train` ------------------------------------------------
@pytest.mark.slow
def test_example_full_run_through_magsrl_up(tmp_path: Path) -> None:
    """examples/train-tiny-full.yaml completes through `magsrl up --train` and `magsrl train`,
    with the policy serving each new version: every rollout of step k asks the policy for
    <run>-v<k> (which only the policy holding version k accepts), none fails or comes back
    stale, the policy swapped weights once per step after going back to the base, and it
    gives its base weights back at the end; older version folders are gone."""
    import json
    import re
    import subprocess
    import sys

    from tests.test_up import kill_stack, read_until, start_up

    example = Path(__file__).parents[1] / "examples" / "train-tiny-full.yaml"
    # The example's dataset lives in the repository: a data root of the trainer (a user runs
    # from the repository, whose folder is a root by default; this test runs elsewhere).
    roots = {"MAGSRL_DATA_ROOTS": str(example.parents[1])}
    proc = start_up(tmp_path, "--model", "tiny", "--train", "--workers", "2", env=roots)
    try:
        out = read_until(proc, "Ctrl-C stops everything", 240.0)
        trainer = re.search(r"train: .* --url\s+(http://127\.0\.0\.1:\d+)", out)
        policy = re.search(r"--url\s+(http://127\.0\.0\.1:\d+)", out)
        assert trainer is not None and policy is not None, out
        train = subprocess.run(
            [sys.executable, "-m", "magsrl.cli", "train", str(example), "--url", trainer[1]],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert train.returncode == 0, train.stdout + train.stderr
        info = httpx.get(f"{trainer[1]}/v1/runs", timeout=30).json()["runs"][0]
        assert info["status"] == "completed", info.get("error")
        run_id = info["run_id"]
        rows = [
            json.loads(line)
            for line in (Path(info["output_dir"]) / "metrics.jsonl").read_text().splitlines()
        ]
        # One version per step that updated (a step whose groups all had one reward makes
        # none, issue 14).
        v = sum(int(r["updated"]) for r in rows)
        assert v >= 1 and info["version"] == v and info["policy_model"] == f"{run_id}-v{v}"
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert all(r["failed"] == 0 and r["stale_dropped"] == 0 for r in rows), rows
        assert all(r["optimizer_steps"] >= 1 for r in rows if r["updated"]), rows
        # A finished run gives back what it held (issue 16): the policy serves its base
        # weights again, as a finished LoRA run unloads its adapters; the version stays on disk.
        served = httpx.get(f"{policy[1]}/v1/weights", timeout=30).json()
        assert served["name"] is None and served["path"] is None
        versions = Path(info["output_dir"]) / "adapters"
        assert sorted(p.name for p in versions.iterdir()) == [f"v{v}"]
        log = (tmp_path / "state" / "logs" / "policy.log").read_text()
        assert log.count('"POST /v1/weights HTTP/1.1" 200') == v
        assert log.count('"DELETE /v1/weights HTTP/1.1" 200') == 2  # at the start and the end

        # A LoRA run next adapts the base model, not the full run's last version.
        from magsrl.cli.train import load_config

        lora_config = load_config(example, steps=1).model_dump()
        lora_config |= {"name": "tiny-lora", "lora": {"enabled": True, "dropout": 0.0}}
        lora_yaml = tmp_path / "lora.yaml"
        lora_yaml.write_text(json.dumps(lora_config))  # JSON is YAML
        command = [sys.executable, "-m", "magsrl.cli", "train", str(lora_yaml)]
        lora = subprocess.run(
            [*command, "--url", trainer[1]],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert lora.returncode == 0, lora.stdout + lora.stderr
        assert httpx.get(f"{policy[1]}/v1/weights", timeout=30).json()["path"] is None
    finally:
        kill_stack(proc)


@pytest.mark.slow
def test_reload_keeps_loaded_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A policy holding a LoRA run's last adapter must still take a full version (it was a
    refusal, so a full run after a LoRA run failed at its first publish): the weights are
    copied in place under peft's wrapping, every base weight changes, the adapter stays, and
    DELETE /v1/weights restores the original exactly. A folder of another size is refused."""
    from magsrl.engines.hf import HFEngine
    from magsrl.policy.config import PolicySettings

    lora = Learner(tiny_model_dir, run_config({"enabled": True}), device="cpu")
    adapter = lora.save_adapter(tmp_path / "adapter")
    full = Learner(tiny_model_dir, run_config(), device="cpu")
    with torch.no_grad():
        for weight in full.model.parameters():
            weight.add_(0.01)
    version = full.save_adapter(tmp_path / "v1")

    from magsrl.models.tiny import ensure_tiny_model

    other = ensure_tiny_model("qwen3_vl")  # another architecture

    async def scenario() -> None:
        engine = HFEngine(PolicySettings(policy_model=str(tiny_model_dir)))
        await engine.start()
        try:
            await engine.load_adapter("lora-v8", str(adapter))
            base = engine.model.get_base_model()
            before = {n: t.clone() for n, t in base.state_dict().items() if "lora_" not in n}
            await engine.reload_weights(str(version), "full-v1")
            now = base.state_dict()
            assert all(not torch.equal(before[n], now[n]) for n in before)
            assert engine.model_names()[1:] == ["full-v1", "lora-v8"]
            assert engine.check_model("full-v1") is None  # the base, not an adapter
            await engine.reload_weights(None, None)
            assert all(torch.equal(before[n], now[n]) for n in before)
            assert engine.loaded_weights() == (None, None)
            with pytest.raises(BadRequest, match="another architecture"):
                await engine.reload_weights(str(other), None)
        finally:
            await engine.close()

    asyncio.run(scenario())
