"""The learner's side of issue 14 and issue 13's point 5, on the same real rollouts as
test_learner.py: dropout never enters the PPO ratio or logprob_diff, the rollout-correction
and entropy instruments reach the step's metrics, gradient checkpointing changes nothing but
memory, and the learning rate follows its schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magsrl.proto.rollout import RolloutResult, Segment
from magsrl.trainer.learner import Learner
from magsrl.trainer.learner_batch import checkpointing_active, use_gradient_checkpointing
from tests.test_learner import AGREEMENT, Episode, config, results_of
from tests.test_learner import eos_id as eos_id  # fixtures
from tests.test_learner import episodes as episodes
from tests.test_learner import zoom_model as zoom_model

# Each test needs the fine-tuned zoom model (about 7 s to build): slow, like test_learner.
pytestmark = pytest.mark.slow


def _lora(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}


def trained_adapter(learner: Learner) -> None:
    """LoRA B starts at 0, which makes dropout (applied before A) invisible: give the adapter
    weights, as after some training."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def on_policy(learner: Learner, results: list[RolloutResult]) -> list[RolloutResult]:
    """The results with the learner's own dropout-off log-probs as the sampler's: a batch
    sampled exactly by the current policy."""
    out = []
    for result in results:
        logps = learner.logprobs(learner.collate([result]))[0].tolist()
        segments, at = [], 0
        for seg in result.segments:
            n = len(seg.ids)
            lp = logps[at : at + n] if seg.mask else None
            segments.append(Segment(ids=seg.ids, mask=seg.mask, logprobs=lp))
            at += n
        out.append(result.model_copy(update={"segments": segments}))
    return out


def test_lora_dropout_stays_out_of_the_ratio(
    episodes: list[Episode], eos_id: int, zoom_model: Path
) -> None:
    """Issue 13, point 5: with LoRA dropout 0.05 an exactly on-policy batch showed
    logprob_diff 0.25, ratio mean 1.23 and 12.5% clipped. With dropout off in the learner's
    forwards (the default) they are 0, 1 and 0; a dropout-on forward shows the noise."""
    run = config(lora={"dropout": 0.05})
    learner = Learner(zoom_model, run, device="cpu")
    trained_adapter(learner)
    results = on_policy(learner, results_of(episodes, eos_id, 1.0))
    metrics = learner.step(results, torch.tensor([1.0, -1.0, 0.5]))
    assert metrics["logprob_diff"] < AGREEMENT
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ratio_min"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["clip_frac"] == 0.0 and metrics["corrected_frac"] == 0.0
    assert metrics["is_ratio_max"] == pytest.approx(1.0, abs=1e-3)
    assert abs(metrics["mismatch_kl"]) < AGREEMENT
    assert metrics["entropy"] > 0

    # Dropout kept in the gradient forward (disable_dropout: false): logprob_diff is still
    # taken with dropout off, but the ratio now carries the dropout noise.
    noisy = Learner(
        zoom_model, config(grpo={"disable_dropout": False}, lora={"dropout": 0.05}), device="cpu"
    )
    trained_adapter(noisy)
    noisy_metrics = noisy.step(results, torch.tensor([1.0, -1.0, 0.5]))
    assert noisy_metrics["logprob_diff"] < AGREEMENT
    assert noisy_metrics["ratio_max"] > 1.0 + 1e-3


def test_gradient_checkpointing_changes_nothing_but_memory(
    episodes: list[Episode], eos_id: int, zoom_model: Path
) -> None:
    """Pins checkpointing that silently stops (transformers runs it only in train mode, so
    turning dropout off by eval() would disable it) or changes the gradient."""
    results = results_of(episodes, eos_id, 1.0)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    plain = Learner(zoom_model, config(grpo={"gradient_checkpointing": "off"}), device="cpu")
    checkpointed = Learner(zoom_model, config(grpo={"gradient_checkpointing": "on"}), device="cpu")
    assert checkpointing_active(checkpointed.model) and not checkpointing_active(plain.model)
    a, b = plain.step(results, advantages), checkpointed.step(results, advantages)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for name, weight in _lora(plain).items():
        torch.testing.assert_close(weight, _lora(checkpointed)[name], atol=1e-6, rtol=1e-5)
    auto = config()
    assert use_gradient_checkpointing(auto, torch.device("cuda"))
    assert not use_gradient_checkpointing(auto, torch.device("cpu"))


def test_the_learning_rate_follows_warmup_and_cosine(
    episodes: list[Episode], eos_id: int, zoom_model: Path
) -> None:
    """Pins a schedule that is configured but never applied to the optimizer."""
    run = config(
        grpo={"learning_rate": 1e-3, "warmup_steps": 2, "lr_schedule": "cosine"}
    ).model_copy(update={"steps": 4})
    learner = Learner(zoom_model, run, device="cpu")
    results = results_of(episodes, eos_id, 1.0)
    lrs = [learner.step(results, torch.tensor([1.0, -1.0, 0.5]))["lr"] for _ in range(4)]
    # warmup 1/2, 2/2; cosine over the remaining 2 steps: 1, then 0.5 * (1 + cos(pi / 2))
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
