"""The hf engine samples with the settings the request names and nothing else, and records
the distribution it actually drew each token from.

Real Qwen checkpoints ship a generation_config.json with sampling defaults (repetition
penalty 1.05, top_k, top_p). transformers fills every field a request leaves unset from it,
and the engine's recorder ran before the warpers and after the penalty, so the recorded
log-probs were of neither the sampled distribution nor the learner's log_softmax(logits/T).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from magsrl.engines.hf import HFEngine
from magsrl.engines.recorder import LOGPROB_FLOOR
from magsrl.policy.config import PolicySettings
from magsrl.zoom.engine import GenerationRequest, GenerationResult, SamplingParams

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours of the rainbow, then stop."},
]
# What Qwen2.5-VL-7B-Instruct's generation_config.json sets, and a min-length on top.
CHECKPOINT_DEFAULTS = {
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_k": 1,
    "top_p": 0.001,
    "min_new_tokens": 20,
}
AGREEMENT = 1e-5  # fp32 on CPU: the same forward, up to kernel batching


@pytest.fixture(scope="module")
def opinionated_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a checkpoint's sampling defaults in its generation_config.json."""
    out = tmp_path_factory.mktemp("opinionated") / "model"
    shutil.copytree(tiny_model_dir, out)
    path = out / "generation_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **CHECKPOINT_DEFAULTS}))
    return out


async def _sample(model: Path, sampling: SamplingParams) -> tuple[HFEngine, GenerationResult]:
    engine = HFEngine(PolicySettings(policy_model=str(model)))  # type: ignore[call-arg]
    await engine.start()
    try:
        result = await engine.generate(GenerationRequest(messages=MESSAGES, sampling=sampling))
    finally:
        await engine.close()
    return engine, result


def _learner_logprobs(engine: HFEngine, result: GenerationResult, temperature: float):
    prompt = list(result.prompt_token_ids or [])
    ids = result.completions[0].token_ids
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([prompt + ids])).logits[0].float()
    steps = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, dim=-1)
    return steps.gather(1, torch.tensor(ids)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_are_the_learners(opinionated_model: Path, temperature: float) -> None:
    """Bug: the checkpoint's repetition_penalty (and top_k/top_p/min length) leaked into
    sampling, and the recorder saw penalised logits: gap 8.7e-4 mean, 1.5e-2 max on this
    model with 1.05. Now the recorded log-probs are the learner's log_softmax(logits/T)."""
    sampling = SamplingParams(temperature=temperature, max_tokens=24, seed=3, logprobs=True)
    engine, result = asyncio.run(_sample(opinionated_model, sampling))
    completion = result.completions[0]
    assert completion.logprobs is not None and len(completion.token_ids) >= 4
    learner = _learner_logprobs(engine, result, temperature)
    gap = max(abs(a - b) for a, b in zip(learner, completion.logprobs, strict=True))
    assert gap < AGREEMENT
    # top_p 0.001 / top_k 1 from the checkpoint would make every token its argmax.
    assert min(completion.logprobs) < -0.5


def test_logprobs_are_of_the_truncated_distribution(opinionated_model: Path) -> None:
    """The recorder runs after top-k: the distribution it reports is the one sampled from,
    with the excluded tokens at vLLM's floor and the kept ones summing to one."""
    sampling = SamplingParams(
        temperature=1.0, top_k=3, max_tokens=8, seed=5, logprobs=True, top_logprobs=5
    )
    _, result = asyncio.run(_sample(opinionated_model, sampling))
    completion = result.completions[0]
    assert completion.top_logprobs
    for step in completion.top_logprobs:
        values = [v for _, v in step]
        kept = values[:3]
        assert math.isclose(sum(math.exp(v) for v in kept), 1.0, abs_tol=1e-5)
        assert values[3:] == [LOGPROB_FLOOR, LOGPROB_FLOOR]
