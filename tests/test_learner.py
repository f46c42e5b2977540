"""The GRPO learner on the tiny model (CPU, fp32), against real rollouts: the real ZoomLoop
with the in-process hf engine and the real magnifier, on a tiny model fine-tuned (seconds)
to ask for a zoom in round 1, so every episode has two rounds and two images.

Pins: the learner trains on the exact sampled ids (segments), its log-probs agree with the
sampler's, tool/observation tokens get no gradient, a step moves only the LoRA weights and
the saved adapter serves the same policy, and a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magsrl.proto.rollout import RolloutResult, Segment
from magsrl.trainer.grpo import group_advantages
from magsrl.trainer.learner import Learner
from magsrl.trainer.learner_batch import collate, sequence_logprobs
from magsrl.trainer.run_config import RunConfig
from magsrl.trainer.trajectory import (
    decode_images,
    encode_images,
    images_from_messages,
    retokenized_rounds,
    segments_from_rounds,
    sequence_ids,
)
from magsrl.zoom.engine import Completion, GenerationResult, SamplingParams, split_images
from magsrl.zoom.loop import LoopOptions, LoopOutcome, ZoomLoop
from tests.conftest import RunningService, photo

QUESTION = "What colour is the sign?"
ROUND1 = "<think>too small<zoom>[[60, 40, 120, 100]]</zoom></think>"
IMAGE_SIZE = (320, 214)  # small, so the fine-tuning and every forward stay cheap
SFT_STEPS = 80
# (temperature, seed, max_tokens): 18 tokens cut round 1 just before its <|im_end|>, so the
# template's end of turn must come back as a mask-0 token.
EPISODES = [(t, seed, n) for t in (1.0, 0.7) for seed, n in ((0, 24), (1, 18), (2, 30))]
AGREEMENT = 1e-4  # the acceptance bound: mean |learner - sampler| log-prob
METRICS_TIMING = {"step_time_s"}

Episode = tuple[float, LoopOutcome]


def rocket() -> tuple[Image.Image, bytes]:
    image = Image.fromarray(photo("rocket")).resize(IMAGE_SIZE)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return image, buf.getvalue()


@pytest.fixture(scope="module")
def zoom_model(
    tmp_path_factory: pytest.TempPathFactory, magnifier: RunningService, tiny_model_dir: Path
) -> Path:
    """The tiny model, taught to ask for one zoom in round 1 (round 2 stays random)."""
    from magsrl.models.sft import SFTExample, finetune
    from magsrl.policy.scripted import Script, conversation

    out = tmp_path_factory.mktemp("learner") / "zoom-model"
    script = Script(rocket()[1], QUESTION, ROUND1, "unused")
    first, _ = asyncio.run(conversation(tiny_model_dir, magnifier.url, script))
    finetune(tiny_model_dir, out, [SFTExample(first, ROUND1)], steps=SFT_STEPS)
    return out


async def _run_episodes(model: Path, magnifier_url: str) -> list[Episode]:
    from magsrl.clients.magnifier import MagnifierClient
    from magsrl.engines.hf import HFEngine
    from magsrl.engines.settings import EngineSettings

    engine = HFEngine(EngineSettings(policy_model=str(model)))
    await engine.start()
    magnifier = MagnifierClient(magnifier_url)
    image, data = rocket()
    out = []
    try:
        loop = ZoomLoop(engine, magnifier)
        for temperature, seed, max_tokens in EPISODES:
            sampling = SamplingParams(
                temperature=temperature, max_tokens=max_tokens, seed=seed, logprobs=True
            )
            opts = LoopOptions(upscale="bicubic", sampling=sampling)
            out.append((temperature, await loop.run(image, data, None, QUESTION, None, opts)))
    finally:
        await magnifier.close()
        await engine.close()
    return out


@pytest.fixture(scope="module")
def episodes(zoom_model: Path, magnifier: RunningService) -> list[Episode]:
    return asyncio.run(_run_episodes(zoom_model, magnifier.url))


@pytest.fixture(scope="module")
def eos_id(zoom_model: Path) -> int:
    from magsrl.models.loading import load_processor

    return int(load_processor(zoom_model).tokenizer.convert_tokens_to_ids("<|im_end|>"))


def rollout(segments: list[Segment], images: list[Image.Image], k: int = 0) -> RolloutResult:
    return RolloutResult(
        job_id=f"run:0:0:{k}",
        run_id="run",
        step=0,
        sample_index=0,
        group_index=k,
        version=0,
        policy_model=None,
        worker="test",
        segments=segments,
        images=encode_images(images),
        reward=0.0,
        components={},
        answer="",
        correct=False,
        zooms=1,
        zoom_errors=0,
        rounds=sum(s.mask for s in segments),
        completion_tokens=sum(len(s.ids) for s in segments if s.mask),
        elapsed_ms=0.0,
    )


def results_of(episodes: list[Episode], eos_id: int, temperature: float) -> list[RolloutResult]:
    return [
        rollout(segments_from_rounds(o.results, eos_id), images_from_messages(o.messages), k)
        for k, (t, o) in enumerate(episodes)
        if t == temperature
    ]


def config(
    grpo: dict[str, object] | None = None, lora: dict[str, object] | None = None
) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "run",
            "model": "tiny",
            "dataset": "unused",
            "grpo": {"group_size": 2, "prompts_per_step": 2, "micro_batch_size": 2, **(grpo or {})},
            "lora": {"dropout": 0.0, **(lora or {})},
        }
    )


def mean_diff(learner: Learner, results: list[RolloutResult], temperature: float) -> float:
    batch = learner.collate(results)
    logps = learner.logprobs(batch, temperature=temperature)  # (B, T)
    mask = batch.completion_mask.bool()
    return float((logps - batch.sampler_logprobs).abs()[mask].mean())


# ---- segments -------------------------------------------------------------------------------
@pytest.mark.slow  # starts services (and fine-tunes a model)
def test_segments_are_the_sampled_rounds(episodes: list[Episode], eos_id: int) -> None:
    """The learner's sequence is P_1 + C_1 + O_1 + C_2: exactly what round 2 saw plus what it
    sampled, with the sampled ids (mask 1) and the template's/tool's (mask 0)."""
    finishes = set()
    for _, outcome in episodes:
        rounds = outcome.results
        assert len(rounds) == 2, "the zoom model must ask for a zoom in round 1"
        assert retokenized_rounds(rounds, eos_id) == []
        segments = segments_from_rounds(rounds, eos_id)
        last = rounds[-1]
        assert sequence_ids(segments) == last.prompt_token_ids + last.completions[0].token_ids
        assert [s.mask for s in segments] == [0, 1, 0, 1]
        sampled = [s for s in segments if s.mask == 1]
        assert [s.ids for s in sampled] == [r.completions[0].token_ids for r in rounds]
        assert [s.logprobs for s in sampled] == [r.completions[0].logprobs for r in rounds]
        assert sum(len(s.ids) for s in sampled) == outcome.usage.completion_tokens
        assert segments[0].ids == rounds[0].prompt_token_ids
        first = rounds[0].completions[0]
        finishes.add(first.finish_reason)
        # Cut by max_tokens: the template's <|im_end|> is there, as an observation token.
        assert (segments[2].ids[0] == eos_id) == (first.finish_reason == "length")
        assert len(images_from_messages(outcome.messages)) == 2
    assert finishes == {"stop", "length"}


def _result(prompt: list[int], completion: list[int]) -> GenerationResult:
    return GenerationResult(
        completions=[Completion("", completion, "stop", [-1.0] * len(completion))],
        prompt_token_ids=prompt,
        prompt_tokens=len(prompt),
        engine_ms=0.0,
        model="m",
    )


EOS = 9


def test_segments_refuse_a_rewritten_history() -> None:
    """A template that drops earlier thinking makes round 2's prompt no extension of round
    1's: there is no single sequence to train on, and silently splicing would be wrong."""
    rounds = [_result([1, 2, 3, 4], [5, 6, EOS]), _result([1, 7, 3, 4, 5, 6, EOS, 8], [2])]
    with pytest.raises(ValueError, match="does not start with the prompt of round 1"):
        segments_from_rounds(rounds, EOS)
    no_logprobs = _result([1], [2])
    no_logprobs.completions[0].logprobs = None
    with pytest.raises(ValueError, match="logprobs=True"):
        segments_from_rounds([no_logprobs], EOS)


def test_retokenised_turns_keep_the_sampled_ids() -> None:
    """The template re-rendered C_1 = [5, 6] as [56]: the learner keeps the sampled ids and the
    round is reported, since round 2 was sampled after [56]."""
    rounds = [_result([1, 2, 3], [5, 6, EOS]), _result([1, 2, 3, 56, EOS, 8, 3], [4])]
    segments = segments_from_rounds(rounds, EOS)
    assert sequence_ids(segments) == [1, 2, 3, 5, 6, EOS, 8, 3, 4]
    assert retokenized_rounds(rounds, EOS) == [0]
    # The turn starts with "\n", which BPE merged with the generation prompt's "\n" (3): 33.
    rounds = [_result([1, 2, 3], [3, 5, EOS]), _result([1, 2, 33, 5, EOS, 8, 3], [4])]
    assert sequence_ids(segments_from_rounds(rounds, EOS)) == [1, 2, 3, 3, 5, EOS, 8, 3, 4]
    assert retokenized_rounds(rounds, EOS) == [0]


def test_images_round_trip_losslessly() -> None:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (9, 5), dtype=np.uint8)),  # L
        Image.fromarray(rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)),  # RGBA
    ]
    back = decode_images(encode_images(images))
    for a, b in zip(images, back, strict=True):
        assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="image 0"):
        decode_images(["not base64!"])


# ---- collation --------------------------------------------------------------------------------
@pytest.mark.slow  # starts a magnifier and fine-tunes a model (zoom_model)
def test_collate_marks_image_tokens_as_the_processor_does(zoom_model: Path) -> None:
    """mm_token_type_ids must be the processor's (1 on <|image_pad|>), extended with zeros;
    pixel values and grids must be the policy's; other pixel bounds are refused."""
    from magsrl.models.loading import load_family, load_processor
    from magsrl.zoom.families import template_text

    processor = load_processor(zoom_model)
    image, _ = rocket()
    crop = image.crop((40, 30, 140, 110))
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "a"}],
        },
        {"role": "tool", "content": [{"type": "image", "image": crop}]},
    ]
    plain, images = split_images(messages)
    text = processor.tokenizer.apply_chat_template(
        plain,
        chat_template=template_text(load_family(zoom_model)),
        add_generation_prompt=True,
        tokenize=False,
    )
    expected = processor(text=[text], images=images, return_tensors="pt")
    n = expected["input_ids"].shape[1]
    image_pad = processor.image_token_id
    segments = [Segment(ids=expected["input_ids"][0].tolist(), mask=0)]
    segments.append(Segment(ids=[5, image_pad, 7], mask=1, logprobs=[-1.0, -2.0, -3.0]))
    batch = collate([rollout(segments, images)], processor, pad_id=0)
    assert torch.equal(batch.mm_token_type_ids[0, :n], expected["mm_token_type_ids"][0].long())
    assert batch.mm_token_type_ids[0, n:].eq(0).all()  # a sampled <|image_pad|> is a word
    assert torch.equal(batch.pixel_values, expected["pixel_values"])
    assert torch.equal(batch.image_grid_thw, expected["image_grid_thw"])
    assert batch.completion_mask[0].tolist() == [0.0] * n + [1.0] * 3
    assert batch.sampler_logprobs[0, n:].tolist() == [-1.0, -2.0, -3.0]
    other = load_processor(zoom_model, max_pixels=processor.pixel_bounds()[1] // 4)
    with pytest.raises(ValueError, match="min/max image pixels"):
        collate([rollout(segments, images)], other, pad_id=0)


# ---- log-probs ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_learner_logprobs_agree_with_the_sampler(
    episodes: list[Episode], eos_id: int, zoom_model: Path, temperature: float
) -> None:
    """The issue's acceptance check: on multi-round, two-image episodes, the learner's log-probs
    of the sampled ids match the hf engine's within 1e-4 (mean abs), in a padded batch."""
    learner = Learner(zoom_model, config(grpo={"temperature": temperature}), device="cpu")
    results = results_of(episodes, eos_id, temperature)
    diff = mean_diff(learner, results, temperature)
    print(f"sampler vs learner at T={temperature}: mean |diff| = {diff:.2e}")
    assert diff < AGREEMENT


@pytest.mark.slow
def test_a_sampled_image_pad_token_is_scored_as_a_word(tiny_model_dir: Path) -> None:
    """A random model can sample <|image_pad|>. The sampler embedded it as a word; the
    learner's forward must too, not take it for an image slot (and crash on the count)."""
    from transformers import LogitsProcessor

    from magsrl.engines.recorder import TokenRecorder

    learner = Learner(tiny_model_dir, config(), device="cpu")
    processor, model = learner.processor, learner.model
    image, _ = rocket()
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
    inputs = processor(text=[text + "<|im_start|>assistant\n"], images=[image], return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]

    class Force(LogitsProcessor):  # after the recorder: it scores the model's own logits
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[1] - prompt_len == 2:
                scores = torch.full_like(scores, -float("inf"))
                scores[:, processor.image_token_id] = 0.0
            return scores

    recorder = TokenRecorder(
        1, decode=lambda ids: "", eos_ids=[], stop=(), want_logprobs=True, top_k=0
    )
    torch.manual_seed(0)
    with learner._eval(model), torch.no_grad():
        model.generate(
            **inputs,
            do_sample=True,
            top_k=0,
            max_new_tokens=6,
            logits_processor=[recorder, Force()],
            streamer=recorder,
        )
    row = recorder.rows[0]
    assert row.token_ids[2] == processor.image_token_id
    segments = [
        Segment(ids=inputs["input_ids"][0].tolist(), mask=0),
        Segment(ids=row.token_ids, mask=1, logprobs=row.logprobs),
    ]
    assert mean_diff(learner, [rollout(segments, [image])], 1.0) < AGREEMENT


@pytest.mark.slow  # starts a magnifier and fine-tunes a model (zoom_model)
def test_masked_tokens_get_no_gradient(
    episodes: list[Episode], eos_id: int, zoom_model: Path
) -> None:
    """Tool/observation tokens (mask 0) in every round get exactly zero gradient at their
    logits, and garbage in their sampler log-probs does not change the loss."""
    learner = Learner(zoom_model, config(), device="cpu")
    batch = learner.collate(results_of(episodes, eos_id, 1.0))
    captured: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured.append(output)

    handle = learner.model.get_output_embeddings().register_forward_hook(keep)
    advantages = torch.tensor([1.0, -0.5, 0.25])
    try:
        loss, _, _ = learner.loss(batch, advantages)
        loss.backward()
    finally:
        handle.remove()
    grad = captured[0].grad  # (B, kept, V): only the last `kept` positions have logits
    first_target = batch.input_ids.shape[1] - grad.shape[1] + 1  # what kept row 0 predicts
    targets = batch.completion_mask[:, first_target:]  # (B, kept - 1)
    per_target = grad[:, :-1].abs().sum(dim=-1)  # (B, kept - 1)
    assert per_target[targets == 0].eq(0).all()
    assert per_target[targets == 1].gt(0).all()

    noisy = batch.sampler_logprobs.clone()
    noisy[batch.completion_mask == 0] = float("nan")
    clean, _, _ = learner.loss(batch, advantages)
    garbage, _, _ = learner.loss(batch, advantages, old_logps=noisy)
    assert torch.isfinite(garbage) and garbage.item() == clean.item()


# ---- steps, adapters, checkpoints ---------------------------------------------------------------
def _is_lora(name: str) -> bool:
    return "lora_" in name


@pytest.mark.slow
def test_a_step_trains_the_adapter_that_the_policy_then_serves(
    episodes: list[Episode],
    eos_id: int,
    zoom_model: Path,
    magnifier: RunningService,
    tmp_path: Path,
) -> None:
    """A step moves the LoRA weights and no base weight; the KL reference is the base; the
    saved adapter loads with peft and into the hf engine, which then samples exactly the
    trained policy (its log-probs agree with the learner's)."""
    from peft import PeftModel

    from magsrl.models.loading import load_model

    learner = Learner(zoom_model, config(grpo={"learning_rate": 1e-2, "beta": 0.05}), device="cpu")
    results = results_of(episodes, eos_id, 1.0)
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    metrics = learner.step(results, group_advantages(torch.tensor([1.0, 0.0, 0.5]), 3))
    after = dict(learner.model.named_parameters())
    assert any(_is_lora(n) for n in before)
    assert not any(_is_lora(n) and ".visual." in n for n in before)  # language model only
    assert all(torch.equal(v, after[n]) for n, v in before.items() if not _is_lora(n))
    assert any(not torch.equal(v, after[n]) for n, v in before.items() if _is_lora(n))
    assert metrics["logprob_diff"] < AGREEMENT and metrics["kl"] < 1e-8  # on-policy, base = ref
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0 and metrics["step"] == 1.0
    batch = learner.collate(results)
    sampled = batch.completion_mask.bool()
    ref = learner.ref_logprobs(batch)  # the base model, which sampled these
    trained = learner.logprobs(batch)
    assert (ref - batch.sampler_logprobs).abs()[sampled].mean() < AGREEMENT
    assert (trained - ref).abs()[sampled].max() > AGREEMENT

    path = learner.save_adapter(tmp_path / "run-v1")
    learner.save_adapter(tmp_path / "run-v1")  # replacing a version is atomic too
    assert (path / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-v1"]  # no temp folders left
    peft_model = PeftModel.from_pretrained(load_model(zoom_model), str(path)).eval()
    with torch.no_grad():
        loaded = sequence_logprobs(
            peft_model, batch, 1.0, pad_id=learner.pad_id, placeholder_ids=learner.placeholder_ids
        )
    assert torch.allclose(loaded, trained, atol=1e-5)

    served = asyncio.run(_serve_adapter(zoom_model, path, magnifier.url))
    fresh = rollout(
        segments_from_rounds(served.results, eos_id), images_from_messages(served.messages)
    )
    assert mean_diff(learner, [fresh], 1.0) < AGREEMENT


async def _serve_adapter(model: Path, adapter: Path, magnifier_url: str) -> LoopOutcome:
    from magsrl.clients.magnifier import MagnifierClient
    from magsrl.engines.hf import HFEngine
    from magsrl.engines.settings import EngineSettings

    engine = HFEngine(EngineSettings(policy_model=str(model)))
    await engine.start()
    magnifier = MagnifierClient(magnifier_url)
    try:
        await engine.load_adapter("run-v1", str(adapter))
        assert "run-v1" in engine.model_names()
        sampling = SamplingParams(temperature=1.0, max_tokens=24, seed=5, logprobs=True)
        opts = LoopOptions(upscale="bicubic", sampling=sampling, model="run-v1")
        image, data = rocket()
        return await ZoomLoop(engine, magnifier).run(image, data, None, QUESTION, None, opts)
    finally:
        await magnifier.close()
        await engine.close()


def _params(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.trainable_state().items()}


@pytest.mark.slow
def test_a_resumed_run_continues_exactly(
    episodes: list[Episode], eos_id: int, zoom_model: Path, tmp_path: Path
) -> None:
    """Two steps straight equal one step, a checkpoint, a new Learner that loads it, and one
    step: weights, optimizer moments, dropout's random stream and the step counter all come
    back (with LoRA dropout and μ = 2 so that each of them matters)."""
    run = config(grpo={"learning_rate": 1e-2, "num_iterations": 2}, lora={"dropout": 0.2})
    results = results_of(episodes, eos_id, 1.0)[:2] * 2
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)

    straight = Learner(zoom_model, run, device="cpu")
    straight.step(results, advantages)
    expected = straight.step(results, advantages)
    expected_params = _params(straight)

    first = Learner(zoom_model, run, device="cpu")
    first.step(results, advantages)
    first.save_checkpoint(tmp_path / "ckpt.pt", extra={"queue": {"next_step": 1}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left
    resumed = Learner(zoom_model, run, device="cpu")
    assert resumed.load_checkpoint(tmp_path / "ckpt.pt") == {"queue": {"next_step": 1}}
    got = resumed.step(results, advantages)

    assert resumed.step_count == 2
    for name, value in expected_params.items():
        assert torch.allclose(_params(resumed)[name], value, atol=1e-6), name
    assert {k: v for k, v in got.items() if k not in METRICS_TIMING} == {
        k: v for k, v in expected.items() if k not in METRICS_TIMING
    }


@pytest.mark.slow
def test_full_fine_tuning_takes_a_step(
    episodes: list[Episode], eos_id: int, zoom_model: Path, tmp_path: Path
) -> None:
    """lora.enabled=False trains every weight, keeps a frozen reference for the KL, and
    saves a whole model folder the policy can load."""
    from magsrl.models.loading import load_model, load_processor

    learner = Learner(
        zoom_model,
        config(lora={"enabled": False}, grpo={"beta": 0.05, "learning_rate": 1e-3}),
        device="cpu",
    )
    results = results_of(episodes, eos_id, 1.0)
    batch = learner.collate(results)
    initial = learner.logprobs(batch)
    metrics = learner.step(results, group_advantages(torch.tensor([1.0, 0.0, 0.5]), 3))
    assert np.isfinite(metrics["loss"]) and "kl" in metrics
    assert torch.equal(learner.ref_logprobs(batch), initial)  # the reference stays frozen
    assert not torch.equal(learner.logprobs(batch), initial)
    path = learner.save_adapter(tmp_path / "full-v1")
    model = load_model(path).eval()
    load_processor(path)  # tokenizer and image settings came along
    with torch.no_grad():
        reloaded = sequence_logprobs(
            model, batch, 1.0, pad_id=learner.pad_id, placeholder_ids=learner.placeholder_ids
        )
    assert torch.allclose(reloaded, learner.logprobs(batch), atol=1e-5)


@pytest.mark.slow  # starts a magnifier and fine-tunes a model (zoom_model)
def test_learner_old_logps_start_the_ratio_at_one(
    episodes: list[Episode], eos_id: int, zoom_model: Path
) -> None:
    """old_logps="learner" (TRL's choice) makes the first ratio exactly 1, so nothing clips."""
    learner = Learner(zoom_model, config(), device="cpu", old_logps="learner")
    results = results_of(episodes, eos_id, 1.0)[:2]
    metrics = learner.step(results, torch.tensor([1.0, -1.0]))
    assert metrics["ratio_mean"] == 1.0 and metrics["clip_frac"] == 0.0
