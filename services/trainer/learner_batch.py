"""The learner's model side: the policy model built for training (``load_policy``), rollout
results to training tensors (``collate``), and those tensors to per-token log-probs
(``sequence_logprobs``). ``magsrl.trainer.learner`` holds the optimizer loop and its state.

Each ``RolloutResult`` is one row: its segments concatenated (the exact sampled ids, see
``magsrl.trainer.trajectory``), right-padded. Its images are decoded and run through the
policy's own image processor, so pixel values and grids are the ones the sampler had.
``mm_token_type_ids`` marks the image placeholders (1) that the template and processor put
in mask-0 segments; the learner must pass it, or Qwen2.5-VL silently falls back to 1-D
positions (environment.md).

A sampled id that happens to equal an image placeholder id (a random model can sample
``<|image_pad|>``) is an ordinary token to the sampler: it was embedded as a word, with a
1-D position. ``mm_token_type_ids`` is 0 there, and ``stray_placeholders`` finds such tokens
so that the forward can treat them the same way.

Log-probs are those of ``magsrl.trainer.grpo.token_logprobs`` (logits / T, as the sampler's
recorder), shifted so that entry ``[b, t]`` is the log-prob of token t given tokens < t.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from magsrl.models.loading import load_model
from magsrl.proto.rollout import RolloutResult
from magsrl.trainer.grpo import token_logprobs_entropy
from magsrl.trainer.learner_images import StepImages
from magsrl.trainer.run_config import RunConfig

LM_HEAD = "lm_head"
IMAGE_TOKEN_TYPE = 1  # mm_token_type_ids: 0 text, 1 image (2 video: never sent here)


VISION_TOWER = "visual"  # Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the ViT and its merger


def vision_tower(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The vision tower (patch embedding, blocks and merger) and its qualified name."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == VISION_TOWER:
            return name, module
    return None


def lora_target_pattern(
    model: nn.Module, targets: list[str] | str, *, train_vision: bool = False
) -> str:
    """A peft ``target_modules`` regex: the named (or, for "all-linear", all) linear layers of
    the language model only; the vision tower has layers of the same names (gate_proj, ...),
    which are adapted too when ``train_vision``."""
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    wanted = targets
    if targets == "all-linear":
        targets = sorted(
            {n.rsplit(".", 1)[-1] for n, m in decoder.named_modules() if isinstance(m, nn.Linear)}
        )
    # "lm_head" sits outside the decoder. Adapting it is what lets a tiny model (hidden 64)
    # move its output distribution at all; vLLM serves LoRA on the decoder's layers only.
    head = [t for t in targets if t == LM_HEAD]
    names = "|".join(re.escape(t) for t in targets if t != LM_HEAD)
    pattern = rf"{re.escape(prefix)}\.(?:.*\.)?(?:{names})" if names else ""
    vision = _vision_targets(model, wanted, train_vision)
    return "|".join(p for p in (pattern, *head, *vision) if p)


def _vision_targets(model: nn.Module, targets: list[str] | str, train_vision: bool) -> list[str]:
    """Exact names of the vision tower's linear layers to adapt (none unless asked). Exact:
    its merger's layers are called "0" and "2", which as a pattern would match whole blocks."""
    tower = vision_tower(model) if train_vision else None
    if tower is None:
        return []
    prefix, module = tower
    return [
        re.escape(f"{prefix}.{name}")
        for name, layer in module.named_modules()
        if isinstance(layer, nn.Linear)
        and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)
    ]


def load_policy(
    model_dir: Path, config: RunConfig, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, nn.Module | None]:
    """The model to train (peft LoRA around the base, or the base itself for full fine-
    tuning), in train mode, and the KL reference: None with LoRA (the adapter is disabled
    instead), a frozen copy with full fine-tuning when beta > 0.

    ``dtype`` is the compute dtype. With LoRA the frozen base is held in it (peft keeps the
    adapter weights in fp32). Full fine-tuning holds every weight in fp32, the master copy
    the optimizer updates: a bf16 weight cannot take an update below 2^-8 of its size (a
    step at lr 1e-5 mostly rounds away), so the learner computes in bf16 under autocast over
    fp32 weights (``Learner``). The vision tower is frozen unless ``lora.train_vision``; the
    reference, which gets no gradients, is held in the compute dtype."""
    full = not config.lora.enabled
    model = load_model(model_dir, device=str(device), dtype=torch.float32 if full else dtype)
    model.config.use_cache = False  # training forwards never reuse a KV cache
    reference = None
    if config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora_target_pattern(
                    model, lora.target_modules, train_vision=lora.train_vision
                ),
                task_type="CAUSAL_LM",
            ),
        )
    else:
        tower = vision_tower(model)
        if tower is not None and not config.lora.train_vision:
            tower[1].requires_grad_(False)
        if config.grpo.beta > 0:
            reference = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
    if config.grpo.disable_dropout:
        disable_dropout(model)
    if use_gradient_checkpointing(config, device):
        enable_checkpointing(model)
    model.train()
    return model, reference


def disable_dropout(model: nn.Module) -> int:
    """Sets every ``nn.Dropout``'s p to 0 (LoRA's included), as TRL's ``disable_dropout_in_model``
    (trl/trainer/utils.py): the model stays in train mode, so gradient checkpointing, which
    transformers runs only in training mode, still works. Returns how many were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            module.p = 0.0
            changed += 1
    return changed


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing, non-reentrant (it works with frozen inputs, as under LoRA,
    without enable_input_require_grads). transformers 5.2x renamed the method; older ones
    (the GPU image's) only have ``gradient_checkpointing_enable``."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def checkpointing_active(model: nn.Module) -> bool:
    """Whether any module of ``model`` recomputes its activations in backward."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def use_gradient_checkpointing(config: RunConfig, device: torch.device) -> bool:
    """grpo.gradient_checkpointing: on, off, or auto (on for cuda, where memory is the limit;
    off on CPU, where the recompute only costs time)."""
    setting = config.grpo.gradient_checkpointing
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def placeholder_ids(model: nn.Module) -> list[int]:
    """The model's image and video placeholder token ids."""
    config = model.config
    names = ("image_token_id", "video_token_id")
    return [int(i) for i in (getattr(config, n, None) for n in names) if i is not None]


@dataclass
class Batch:
    """A padded batch of episodes. Every (B, T) tensor is aligned on token positions: entry
    ``[b, t]`` is about token ``input_ids[b, t]``."""

    input_ids: Tensor  # (B, T) long, right-padded with the pad id
    attention_mask: Tensor  # (B, T) long: 1 on real tokens
    completion_mask: Tensor  # (B, T) float: 1 on sampled tokens, 0 elsewhere
    sampler_logprobs: Tensor  # (B, T) float32: the sampler's log-prob at mask-1 tokens, else 0
    mm_token_type_ids: Tensor  # (B, T) long: 1 on image placeholder tokens
    pixel_values: Tensor | None  # (patches, channels * temporal_patch * patch * patch)
    image_grid_thw: Tensor | None  # (images, 3)

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def completion_tokens(self) -> int:
        return int(self.completion_mask.count_nonzero())

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            f.name: (v.to(device) if isinstance(v, Tensor) else v)
            for f in fields(self)
            if (v := getattr(self, f.name)) is not None
        }
        return replace(self, **moved)


def _row(result: RolloutResult) -> tuple[list[int], list[int], list[float]]:
    if result.error is not None:
        raise ValueError(
            f"rollout {result.job_id} failed ({result.error}): leave failed rollouts out of "
            "the step, they carry no tokens"
        )
    ids: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    for k, segment in enumerate(result.segments):
        ids += segment.ids
        mask += [segment.mask] * len(segment.ids)
        if segment.mask == 1:
            if segment.logprobs is None or len(segment.logprobs) != len(segment.ids):
                raise ValueError(
                    f"rollout {result.job_id}: segment {k} has mask 1 but "
                    f"{'no' if segment.logprobs is None else len(segment.logprobs)} log-probs "
                    f"for {len(segment.ids)} ids; the worker must record the sampler's log-probs"
                )
            logprobs += segment.logprobs
        else:
            logprobs += [0.0] * len(segment.ids)
    if 1 not in mask:
        raise ValueError(f"rollout {result.job_id} has no sampled (mask-1) tokens")
    if mask[0] == 1:
        # Position 0 has no logit before it: the sampled tokens must follow a prompt.
        raise ValueError(f"rollout {result.job_id} starts with a sampled token, not a prompt")
    return ids, mask, logprobs


def _image_runs(row: Tensor) -> list[int]:
    """Lengths of the runs of image tokens in a (T,) 0/1 row."""
    padded = torch.cat([row.new_zeros(1), row, row.new_zeros(1)])  # (T + 2,)
    edges = torch.diff(padded)  # +1 where a run starts, -1 right after it ends
    starts = (edges == 1).nonzero().flatten()
    ends = (edges == -1).nonzero().flatten()
    return (ends - starts).tolist()


def _check_images(
    result: RolloutResult, runs: list[int], grids: Tensor, merge_size: int, processor: Any
) -> None:
    """Each image's placeholder run must be exactly as long as its processed grid: otherwise
    the learner's image processor resized differently from the policy's."""
    expected = (grids.prod(dim=-1) // merge_size**2).tolist()
    if runs != expected:
        low, high = processor.pixel_bounds()
        raise ValueError(
            f"rollout {result.job_id}: its ids hold image runs of {runs} tokens, but its "
            f"{result.image_count} images give {expected} with this processor (pixels "
            f"{low}..{high}); give the learner the policy's min/max image pixels"
        )


def collate(
    results: Sequence[RolloutResult],
    processor: Any,
    pad_id: int,
    images: StepImages | None = None,
) -> Batch:
    """One right-padded ``Batch`` of ``results``, images through ``processor`` (the policy's
    ``QwenVLProcessor``, with the policy's pixel bounds). ``images`` resolves and processes
    them (pass the step's, so each distinct image is processed once per step); the default
    reads inline images only."""
    if not results:
        raise ValueError("collate needs at least one rollout result")
    rows = [_row(r) for r in results]
    width = max(len(ids) for ids, _, _ in rows)
    batch_shape = (len(rows), width)
    input_ids = torch.full(batch_shape, pad_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros(batch_shape, dtype=torch.long)  # (B, T)
    completion = torch.zeros(batch_shape, dtype=torch.float32)  # (B, T)
    sampler = torch.zeros(batch_shape, dtype=torch.float32)  # (B, T)
    for b, (ids, mask, logprobs) in enumerate(rows):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids, dtype=torch.long)
        attention[b, :n] = 1
        completion[b, :n] = torch.tensor(mask, dtype=torch.float32)
        sampler[b, :n] = torch.tensor(logprobs, dtype=torch.float32)
    # Placeholders come from the template (mask 0); a sampled <|image_pad|> is a plain word.
    placeholder = (input_ids == processor.image_token_id) & (completion == 0) & (attention == 1)
    mm_token_type_ids = placeholder.long() * IMAGE_TOKEN_TYPE  # (B, T)

    if images is None:
        images = StepImages(processor, store=None)
    # (patches, C * tp * p * p) and (images, 3)
    pixel_values, grids = images.batch(results)
    merge = int(processor.image_processor.merge_size)
    first = 0
    for b, result in enumerate(results):
        n = result.image_count
        own = grids[first : first + n] if grids is not None else torch.zeros(0, 3)
        _check_images(result, _image_runs(placeholder[b].long()), own, merge, processor)
        first += n
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        completion_mask=completion,
        sampler_logprobs=sampler,
        mm_token_type_ids=mm_token_type_ids,
        pixel_values=pixel_values,
        image_grid_thw=grids,
    )


def stray_placeholders(batch: Batch, placeholder_ids: Sequence[int]) -> Tensor:
    """(B, T) bool: real tokens whose id is a placeholder id (image or video) but that are not
    image tokens: ids the model sampled, which the sampler embedded as ordinary words."""
    ids = batch.input_ids
    is_placeholder = torch.isin(ids, torch.tensor(list(placeholder_ids), device=ids.device))
    return is_placeholder & (batch.mm_token_type_ids == 0) & batch.attention_mask.bool()


@contextlib.contextmanager
def _plain_embeddings(model: nn.Module, stray: Tensor, ids: Tensor) -> Iterator[None]:
    """While active, the input embedding at ``stray`` positions is that of ``ids`` there.

    The model finds image slots by id, so a sampled ``<|image_pad|>`` would be taken for one
    (and the forward refuses the count). It goes in as another id, and this hook puts the
    sampled token's own embedding back: what the sampler embedded."""
    if not bool(stray.any()):
        yield
        return
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise NotImplementedError(f"sampled placeholder ids with a {type(embedding)} embedding")

    def hook(module: nn.Embedding, args: Any, output: Tensor) -> Tensor:
        if output.shape[:2] != stray.shape:  # some other lookup (a single id)
            return output
        real = nn.functional.embedding(ids, module.weight, module.padding_idx)  # (B, T, H)
        return torch.where(stray.unsqueeze(-1), real.to(output.dtype), output)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def sequence_logprobs(
    model: nn.Module,
    batch: Batch,
    temperature: float,
    *,
    pad_id: int,
    placeholder_ids: Sequence[int],
) -> Tensor:
    """(B, T) log-probs of each token of ``batch`` (on the model's device) given the tokens
    before it, under ``softmax(logits / temperature)``; 0 at position 0 and everywhere before
    the batch's first sampled token. Runs in the model's current mode; autograd if enabled."""
    return sequence_logprobs_entropy(
        model, batch, temperature, pad_id=pad_id, placeholder_ids=placeholder_ids, entropy=False
    )[0]


def sequence_logprobs_entropy(
    model: nn.Module,
    batch: Batch,
    temperature: float,
    *,
    pad_id: int,
    placeholder_ids: Sequence[int],
    entropy: bool = True,
) -> tuple[Tensor, Tensor]:
    """``sequence_logprobs`` and the (B, T) entropy of the policy at each token's position
    (no gradient; 0 where no logits were computed, or everywhere when ``entropy`` is False)."""
    ids = batch.input_ids  # (B, T)
    sampled_at = batch.completion_mask.bool().any(dim=0).nonzero()
    # Logits only from the first sampled position on: the prompt (mostly image tokens) needs
    # none, and the (B, T, V) logits are the largest activation of the forward.
    first = int(sampled_at[0]) if len(sampled_at) else ids.shape[1] - 1
    stray = stray_placeholders(batch, placeholder_ids)  # (B, T)
    with _plain_embeddings(model, stray, ids):
        out = model(
            input_ids=torch.where(stray, pad_id, ids),
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
            mm_token_type_ids=batch.mm_token_type_ids,
            use_cache=False,
            logits_to_keep=ids.shape[1] - first + 1,
        )
    logits = out.logits[:, :-1]  # (B, T - first, V): position t - 1 predicts token t
    scored, ent = token_logprobs_entropy(logits, ids[:, first:], temperature, entropy=entropy)
    return nn.functional.pad(scored, (first, 0)), nn.functional.pad(ent, (first, 0))  # (B, T)
