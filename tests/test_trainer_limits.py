"""Finite numbers and finished runs (issue 16): a run config with Infinity or NaN is
refused at submit, a non-finite loss skips the update and publishes nothing (and a run
that keeps producing them stops with the reason), and a finished run's adapters leave
the policy."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from pydantic import ValidationError

from magsrl.proto.rollout import RolloutResult, Segment
from magsrl.trainer.config import TrainerSettings
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.run_loop import Hooks, RunFailed, RunLoop

BASE: dict[str, Any] = {
    "name": "finite",
    "model": "tiny",
    "dataset": "unused",
    "grpo": {"group_size": 2, "prompts_per_step": 2, "micro_batch_size": 2},
}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"rewards": {"format": math.inf}}, id="reward-inf"),
        pytest.param({"lora": {"alpha": math.inf}}, id="alpha-inf"),
        pytest.param({"grpo": {**BASE["grpo"], "learning_rate": math.nan}}, id="lr-nan"),
        pytest.param({"grpo": {**BASE["grpo"], "beta": math.inf}}, id="beta-inf"),
    ],
)
def test_non_finite_numbers_are_refused(change: dict[str, Any]) -> None:
    """Bug: ``rewards.format: Infinity`` hung a run 1,800 s; ``lora.alpha: Infinity``
    trained to NaN and published the NaN adapter."""
    with pytest.raises(ValidationError, match="finite"):
        RunConfig.model_validate({**BASE, **change})


def _loop(tmp_path: Path, warnings: list[str], **settings: Any) -> RunLoop:
    hooks = Hooks(
        on_step=lambda *_: None,
        on_warning=lambda step, message: warnings.append(message),
        on_version=lambda *_: None,
        on_checkpoint=lambda *_: None,
        cancelled=asyncio.Event(),
    )
    s = TrainerSettings(runs_dir=tmp_path, tensorboard=False, **settings)  # type: ignore[call-arg]
    return RunLoop("finite-abc123", RunConfig.model_validate(BASE), tmp_path, s, hooks, None)  # type: ignore[arg-type]


def test_non_finite_steps_warn_then_stop_the_run(tmp_path: Path) -> None:
    """A non-finite step is a warning and no new version; N in a row stop the run with a
    reason; a finite step in between starts the count again."""
    warnings: list[str] = []
    loop = _loop(tmp_path, warnings, max_nonfinite_steps=3)
    bad, good = {"loss": math.nan, "nonfinite": 1.0}, {"loss": 0.1}
    assert loop._nonfinite(0, bad) and loop._nonfinite(1, bad)
    assert not loop._nonfinite(2, good)
    assert loop._nonfinite(3, bad) and loop._nonfinite(4, bad)
    assert len(warnings) == 4 and "no adapter published" in warnings[0]
    with pytest.raises(RunFailed, match="MAGSRL_MAX_NONFINITE_STEPS"):
        loop._nonfinite(5, bad)


def test_a_non_finite_loss_skips_the_update(tiny_model_dir: Path) -> None:
    """The learner must not apply a NaN update (it poisons every weight for good): the
    step reports ``nonfinite`` and the weights are as before."""
    from PIL import Image

    from magsrl.trainer.learner import Learner
    from magsrl.trainer.trajectory import encode_images

    learner = Learner(tiny_model_dir, RunConfig.model_validate(BASE), device="cpu")
    image = Image.new("RGB", (64, 64), "blue")
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
    prompt = learner.processor(
        text=[text + "<|im_start|>assistant\n"], images=[image], return_tensors="pt"
    )["input_ids"][0].tolist()
    results = [
        RolloutResult(
            job_id=f"r:0:0:{k}",
            run_id="r",
            step=0,
            sample_index=0,
            group_index=k,
            version=0,
            policy_model=None,
            worker="test",
            segments=[
                Segment(ids=prompt, mask=0),
                Segment(ids=[40, 41, 42], mask=1, logprobs=[-1.0, -1.0, -1.0]),
            ],
            images=encode_images([image]),
            reward=0.0,
            components={},
            answer="",
            correct=False,
            zooms=0,
            zoom_errors=0,
            rounds=1,
            completion_tokens=3,
            elapsed_ms=0.0,
        )
        for k in range(2)
    ]
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    metrics = learner.step(results, torch.tensor([math.nan, 1.0]))
    assert metrics.get("nonfinite") == 1.0
    assert learner.step_count == 0
    for name, param in learner.model.named_parameters():
        assert torch.equal(param.detach(), before[name]), name
    metrics = learner.step(results, torch.tensor([1.0, -1.0]))  # a finite one still trains
    assert "nonfinite" not in metrics and learner.step_count == 1


def test_a_finished_run_unloads_its_adapters(tmp_path: Path) -> None:
    """Bug: a cancelled run left its adapter loaded; after 8 such runs (the policy's
    adapter limit) the next run failed. The current and previous versions are unloaded."""
    from magsrl.proto.trainer import RunInfo
    from magsrl.trainer.runs import Run, RunManager

    deleted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "DELETE"
        deleted.append(request.url.path)
        return httpx.Response(404 if "v2" in request.url.path else 200, json={})

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            s = TrainerSettings(runs_dir=tmp_path, policy_url="http://policy")  # type: ignore[call-arg]
            manager = RunManager(s, http)
            info = RunInfo(
                run_id="r-abc123",
                name="r",
                status="cancelled",
                step=3,
                total=8,
                created_at=0.0,
                output_dir=str(tmp_path),
                version=3,
                policy_model="r-abc123-v3",
            )
            await manager._unload(Run(info, RunConfig.model_validate(BASE)))

    asyncio.run(main())
    assert deleted == ["/v1/adapters/r-abc123-v2", "/v1/adapters/r-abc123-v3"]
