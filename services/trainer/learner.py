"""The GRPO learner: a transformers Qwen-VL policy (peft LoRA by default, full fine-tuning as
an option) that scores the exact sampled token ids of multi-round rollouts and takes
optimizer steps with the pure loss of ``magsrl.trainer.grpo``.

One ``step`` is: collate the results into micro-batches, then for each of μ passes
(``grpo.num_iterations``) a forward/backward per micro-batch (exact gradient accumulation:
every micro-batch divides by the full batch's ``batch_normaliser``), gradient clipping and
one AdamW update. The trainer drives it::

    learner = Learner(model_dir, config)
    metrics = learner.step(results, advantages)   # advantages: grpo.group_advantages(...)
    learner.save_adapter(run_dir / f"{config.name}-v{learner.step_count}")

How it differs from TRL's GRPOTrainer:
- No re-tokenisation: the rows are the rollout workers' sampled ids (with the template's and
  the tools' tokens as mask 0 in every round), and the images are rebuilt losslessly.
- The PPO ratio is taken against the learner's *own* pre-update log-probs, with dropout off
  (``grpo.disable_dropout``, TRL's ``disable_dropout``), so an exactly on-policy batch has
  ratio 1; the gap to the sampler (vLLM in bf16, another kernel) is corrected by truncated
  importance sampling and optional sequence masking, as verl's rollout correction
  (``magsrl.trainer.grpo``), and logged (``is_ratio_*``, ``mismatch_kl``). With dropout on,
  the old log-probs and ``logprob_diff`` come from a separate dropout-off forward.
  ``old_logps="sampler"`` (the ratio against the sampler, no correction) is an option.
- The learning rate follows ``magsrl.trainer.optim.lr_factor`` (warmup, constant or cosine),
  a function of the step counter, so resuming needs no scheduler state.
- LoRA's "all-linear" means the linear layers of the language model: the vision tower and
  merger stay frozen, which is also what vLLM's runtime LoRA applies adapters to.
- With LoRA the KL reference is the same model with the adapter disabled: no memory cost.
  Full fine-tuning keeps a frozen copy when beta > 0 (one more set of weights, no gradients
  or optimizer state; e.g. 15 GiB for a 7B model in bf16).
- Full fine-tuning keeps fp32 weights and AdamW state and computes in the compute dtype
  (bf16 on cuda) under ``torch.autocast``: mixed precision in the form PyTorch's AMP and
  FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)`` take, rather than bf16 weights plus a
  separate fp32 master copy (the same 16 bytes per trained weight, with no copy to keep in
  step). In bf16 weights an update below 2^-8 of a weight rounds away: 10 steps at lr 1e-5
  moved 15% of the weights, against 100% in fp32 (issue 13). The vision tower is frozen
  unless ``lora.train_vision``; each published version is a whole model folder of
  safetensors in the compute dtype, which the policy reloads (``POST /v1/weights``).
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from magsrl.common.files import atomic_directory, atomic_path
from magsrl.common.image_blobs import open_image_store
from magsrl.models.device import pick_device, pick_dtype
from magsrl.models.loading import load_processor
from magsrl.proto.rollout import RolloutResult
from magsrl.trainer.fast_pixels import FastPixels
from magsrl.trainer.grpo import batch_normaliser, grpo_loss
from magsrl.trainer.learner_batch import (
    Batch,
    collate,
    load_policy,
    placeholder_ids,
    sequence_logprobs_entropy,
)
from magsrl.trainer.learner_images import StepImages
from magsrl.trainer.optim import lr_factor
from magsrl.trainer.run_config import RunConfig
from magsrl.zoom.families import END_OF_TURN

OldLogps = Literal["sampler", "learner"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")  # not copied: save_pretrained writes them
CHECKPOINT_FORMAT = 1  # bumped when the checkpoint's layout changes
# grpo_loss metrics that are counts (summed over micro-batches and passes); names ending in
# _min / _max are extremes; every other one is a mean over completion tokens.
COUNT_METRICS = frozenset({"tokens", "seq_masked", "sequences", "loss"})


class Learner:
    """The policy being trained, its optimizer and step counter (see the module docstring).
    Creating one seeds python, numpy and torch from ``config.seed`` (process-wide)."""

    def __init__(
        self,
        model_dir: Path,
        config: RunConfig,
        device: str = "auto",
        dtype: torch.dtype | str = "auto",
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        old_logps: OldLogps = "learner",
        image_store_dir: Path | None = None,
    ) -> None:
        """``min_pixels``/``max_pixels`` must be the policy's image bounds (its
        ``min_image_pixels``/``max_image_pixels_model``), so images become the same tokens.
        ``dtype`` auto is bf16 on cuda and fp32 on CPU. ``image_store_dir``: the shared
        image store the results' ``image_refs`` point into (the workers')."""
        if old_logps not in ("sampler", "learner"):
            raise ValueError(f"old_logps={old_logps!r} must be 'sampler' or 'learner'")
        seed_everything(config.seed)  # LoRA's random init (and dropout) follow the run seed
        self.model_dir = Path(model_dir)
        self.config = config
        self.loss_config = config.loss_config()
        self.old_logps: OldLogps = old_logps
        self.device = pick_device(device)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, self.device)
        self.processor = load_processor(self.model_dir, min_pixels, max_pixels)
        self.image_store = open_image_store(image_store_dir)
        self.pixels = FastPixels(self.processor.image_processor)
        self._step_images: StepImages | None = None  # set for the length of one step
        tokenizer = self.processor.tokenizer
        self.eos_id = int(tokenizer.convert_tokens_to_ids(END_OF_TURN))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)
        model, self.reference = load_policy(self.model_dir, config, self.device, self.dtype)
        # Full fine-tuning holds fp32 master weights (load_policy); the forward then runs in
        # the compute dtype under autocast. LoRA's base is already held in the compute dtype.
        self.autocast = not config.lora.enabled and self.dtype != torch.float32
        self.placeholder_ids = placeholder_ids(model)
        self.model = self._wrap(model)  # a distributed learner shards it here
        self.optimizer = torch.optim.AdamW(
            self.trainable_parameters(),
            lr=config.grpo.learning_rate,
            weight_decay=config.grpo.weight_decay,
        )
        self.step_count = 0

    # ---- hooks a distributed learner overrides (magsrl.trainer.distributed) ---------------
    def _wrap(self, model: nn.Module) -> nn.Module:
        """The model the optimizer trains; here, as loaded."""
        return model

    def _micro_batches(
        self, results: Sequence[RolloutResult], advantages: Tensor
    ) -> tuple[list[Batch], list[Tensor]]:
        """The step's micro-batches and their (B,) advantages. Similar lengths share a
        micro-batch (less padding); the loss does not depend on order."""
        size = self.config.grpo.micro_batch_size
        order = sorted(
            range(len(results)), key=lambda i: sum(len(s.ids) for s in results[i].segments)
        )
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        batches = [self.collate([results[i] for i in chunk]) for chunk in chunks]
        advs = [advantages.detach().float()[torch.tensor(chunk)] for chunk in chunks]
        return batches, advs

    def _normaliser(self, batches: list[Batch]) -> float:
        """The loss denominator of the whole step (grpo.batch_normaliser)."""
        return batch_normaliser([b.completion_mask for b in batches], self.loss_config)

    def _clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clips the gradients to ``max_norm``; returns their norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _reduce_totals(self, totals: dict[str, float]) -> dict[str, float]:
        """The step's metric totals over every process: one process has them all."""
        return totals

    # ---- parameters ---------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        """The weights the optimizer changes, by name (LoRA A/B, or every weight)."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    # ---- batches and log-probs ----------------------------------------------------------
    def collate(self, results: Sequence[RolloutResult]) -> Batch:
        images = self._step_images
        if images is None:  # outside a step (tests, the distributed padding batch)
            images = StepImages(self.processor, self.image_store, self.pixels)
        return collate(results, self.processor, self.pad_id, images)

    def _forward_logprobs(
        self, batch: Batch, model: nn.Module, temperature: float | None = None
    ) -> Tensor:
        return self._forward(batch, model, temperature)[0]

    def _forward(
        self,
        batch: Batch,
        model: nn.Module,
        temperature: float | None = None,
        *,
        entropy: bool = False,
    ) -> tuple[Tensor, Tensor]:
        t = self.config.grpo.temperature if temperature is None else temperature
        with self._compute():
            return sequence_logprobs_entropy(
                model,
                batch.to(self.device),
                t,
                pad_id=self.pad_id,
                placeholder_ids=self.placeholder_ids,
                entropy=entropy,
            )

    def _compute(self) -> contextlib.AbstractContextManager[object]:
        """The compute dtype over fp32 master weights (full fine-tuning in bf16), else as is."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def logprobs(self, batch: Batch, temperature: float | None = None) -> Tensor:
        """(B, T) log-probs of the batch's tokens under the current policy (no grad, dropout
        off), with the sampling temperature (the sampler scored logits / T)."""
        with self._eval(self.model), torch.no_grad():
            return self._forward_logprobs(batch, self.model, temperature)

    def ref_logprobs(self, batch: Batch) -> Tensor:
        """(B, T) log-probs under the reference policy for the KL: the base model (LoRA
        disabled, free) or, with full fine-tuning, the frozen copy kept when beta > 0."""
        if self.config.lora.enabled:
            with self.model.disable_adapter(), self._eval(self.model), torch.no_grad():
                return self._forward_logprobs(batch, self.model)
        if self.reference is None:
            raise ValueError(
                "full fine-tuning keeps the reference model only when grpo.beta > 0 (it is a "
                "second copy of the weights); set beta > 0 to use the KL"
            )
        with torch.no_grad():
            return self._forward_logprobs(batch, self.reference)

    @contextlib.contextmanager
    def _eval(self, model: nn.Module) -> Iterator[None]:
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)

    def loss(
        self,
        batch: Batch,
        advantages: Tensor,
        *,
        old_logps: Tensor | OldLogps = "learner",
        ref_logps: Tensor | None = None,
        normaliser: float | None = None,
        entropy: bool = False,
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The GRPO loss of one (micro-)batch with grad, its (B, T) log-probs, and metrics.
        ``old_logps``: a (B, T) tensor of the learner's pre-update log-probs, "learner" (these
        very log-probs, detached: the ratio is exactly 1 when dropout is off), or "sampler"
        (the sampler's: the ratio carries the engines' gap and no correction applies). With
        a learner reference, the sampler's log-probs drive the rollout correction.
        ``entropy`` adds the mean entropy over completion tokens to the metrics."""
        logps, ent = self._forward(batch, self.model, entropy=entropy)  # (B, T)
        sampler = batch.sampler_logprobs.to(self.device)
        mask = batch.completion_mask.to(self.device)
        if isinstance(old_logps, Tensor):
            old, behaviour = old_logps.to(self.device), sampler
        elif old_logps == "learner":
            old, behaviour = logps.detach(), sampler
        else:
            old, behaviour = sampler, None
        loss, metrics = grpo_loss(
            logps,
            old,
            advantages.to(self.device),
            mask,
            self.loss_config,
            ref_logps,
            sampler_logps=behaviour,
            normaliser=normaliser,
        )
        if entropy:
            metrics["entropy"] = float((ent * mask).sum() / mask.sum().clamp(min=1))
        return loss, logps, metrics

    # ---- the optimizer step -------------------------------------------------------------
    def step(self, results: Sequence[RolloutResult], advantages: Tensor) -> dict[str, float]:
        """μ optimizer updates on ``results`` with per-sequence ``advantages`` (N,) (zero-
        variance groups already dropped by the caller, if wanted). Returns the step's metrics:
        loss, grad_norm (before clipping), lr, logprob_diff (mean |learner - sampler| over
        sampled tokens before the update, learner with dropout off), entropy, the PPO ratio's
        and the learner/sampler ratio's mean/min/max, clip and correction fractions,
        mismatch_kl, kl (beta > 0), tokens, time."""
        started = time.perf_counter()
        if len(results) != advantages.shape[0]:
            raise ValueError(f"{len(results)} results but {advantages.shape[0]} advantages")
        if not results:
            raise ValueError("a step needs at least one rollout result")
        grpo = self.config.grpo
        # Each distinct image (a group's shared original) decoded and processed once a step.
        self._step_images = StepImages(self.processor, self.image_store, self.pixels)
        try:
            batches, advs = self._micro_batches(results, advantages)
        finally:
            self._step_images = None
        norm = self._normaliser(batches)
        refs = [self.ref_logprobs(b) if self.loss_config.beta > 0 else None for b in batches]
        olds: list[Tensor | OldLogps] = [self.old_logps] * len(batches)
        if self.old_logps == "learner" and (grpo.num_iterations > 1 or not grpo.disable_dropout):
            # Fixed before the first update, with dropout off, so later passes (and a
            # dropout-on gradient forward) compare against the policy that was.
            olds = [self.logprobs(b) for b in batches]

        lr = grpo.learning_rate * lr_factor(
            self.step_count,
            self.config.steps,
            grpo.warmup_steps,
            grpo.lr_schedule,
            grpo.min_lr_ratio,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals: dict[str, float] = {}
        weight = 0.0
        diff_sum = diff_max = grad_sum = 0.0
        params = self.trainable_parameters()
        max_norm = grpo.max_grad_norm if grpo.max_grad_norm > 0 else float("inf")
        nonfinite = False
        self.model.train()
        for it in range(grpo.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for batch, adv, ref, old in zip(batches, advs, refs, olds, strict=True):
                loss, logps, m = self.loss(
                    batch, adv, old_logps=old, ref_logps=ref, normaliser=norm, entropy=it == 0
                )
                loss.backward()
                if batch.completion_tokens == 0:
                    continue  # a distributed rank's padding micro-batch: no metrics
                weight += m["tokens"]
                _accumulate(totals, m)
                if it == 0:  # the learner's pre-update, dropout-off log-probs vs the sampler
                    first = old if isinstance(old, Tensor) else logps
                    diff_sum, diff_max = _accumulate_diff(first, batch, diff_sum, diff_max)
            grad = self._clip_grad_norm(params, max_norm)
            grad_sum += grad
            if not (math.isfinite(totals.get("loss", 0.0)) and math.isfinite(grad)):
                nonfinite = True  # an update with NaN/inf would poison the weights: skip it
                break
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not nonfinite:
            self.step_count += 1

        passes = grpo.num_iterations
        totals.update(
            _weight=weight,
            _diff_sum=diff_sum,
            _diff_max=diff_max,
            _tokens=float(sum(b.completion_tokens for b in batches)),
        )
        totals = self._reduce_totals(totals)
        weight, diff_sum = totals.pop("_weight"), totals.pop("_diff_sum")
        diff_max, tokens = totals.pop("_diff_max"), int(totals.pop("_tokens"))
        first_pass_tokens = float(max(tokens, 1))
        metrics: dict[str, float] = {}
        for name, total in totals.items():
            if name.endswith(("_min", "_max")) or name in COUNT_METRICS:
                metrics[name] = total
            elif name == "entropy":  # first pass only
                metrics[name] = total / first_pass_tokens
            else:
                metrics[name] = total / max(weight, 1.0)
        metrics.update(
            loss=totals.get("loss", 0.0) / passes,
            grad_norm=grad_sum / passes,
            logprob_diff=diff_sum / max(tokens, 1),
            logprob_diff_max=diff_max,
            tokens=float(tokens),
            sequences=float(len(results)),
            lr=lr,
            step=float(self.step_count),
            step_time_s=time.perf_counter() - started,
        )
        if "seq_masked" in totals:
            metrics["seq_masked_frac"] = totals["seq_masked"] / max(totals["sequences"], 1.0)
            del metrics["seq_masked"]
        if nonfinite:
            metrics["nonfinite"] = 1.0  # no update was made (run_loop publishes nothing)
        return metrics

    # ---- saving -------------------------------------------------------------------------
    def save_adapter(self, path: Path) -> Path:
        """Writes the policy for serving, atomically (a temp folder beside ``path``, then a
        rename): with LoRA a peft adapter folder (what the policy's ``/v1/adapters`` loads);
        with full fine-tuning a whole model folder (weights, config, tokenizer), which the
        policy serves as a model, not as an adapter."""
        with atomic_directory(Path(path)) as tmp:
            if self.config.lora.enabled:
                self.model.save_pretrained(str(tmp))
            else:
                self._save_full(tmp)
        return Path(path)

    def _save_full(self, folder: Path, state: dict[str, Tensor] | None = None) -> None:
        """A whole model folder: safetensors in the compute dtype (what the policy serves in;
        the fp32 master weights stay in the training checkpoint), config, and the base's
        tokenizer, processor and chat files."""
        for item in self.model_dir.iterdir():
            weights = item.suffix in WEIGHT_SUFFIXES or item.name.endswith(".index.json")
            if item.is_file() and not weights:
                shutil.copyfile(item, folder / item.name)
        # Cast on the host: a second copy of a 7B model would not fit beside training.
        # ``state``: the whole model, gathered from a distributed learner's shards.
        state = {
            name: t.detach().to(device="cpu", dtype=self.dtype)
            for name, t in (self.model.state_dict() if state is None else state).items()
        }
        self.model.save_pretrained(str(folder), state_dict=state)  # safetensors

    def save_checkpoint(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """One file with the trainable weights, optimizer, RNG states, step counter and the
        caller's ``extra`` (e.g. queue state; plain Python values), written atomically."""
        write_checkpoint(Path(path), self.trainable_state(), self.optimizer, self.step_count, extra)

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restores a ``save_checkpoint`` file; returns its ``extra``. The next ``step`` is then
        the one an uninterrupted run would have taken."""
        self.step_count, extra = restore_checkpoint(
            Path(path), dict(self.model.named_parameters()), self.optimizer
        )
        return extra


def _accumulate(totals: dict[str, float], m: dict[str, float]) -> None:
    """Folds one micro-batch's grpo_loss metrics into ``totals``: extremes by min/max, counts
    by sum, means weighted by the micro-batch's tokens."""
    for name, value in m.items():
        if name.endswith("_min"):
            totals[name] = min(totals.get(name, value), value)
        elif name.endswith("_max"):
            totals[name] = max(totals.get(name, value), value)
        elif name in COUNT_METRICS:
            totals[name] = totals.get(name, 0.0) + value
        else:
            totals[name] = totals.get(name, 0.0) + value * m["tokens"]


def _accumulate_diff(
    logps: Tensor, batch: Batch, total: float, largest: float
) -> tuple[float, float]:
    mask = batch.completion_mask.to(logps.device).bool()  # (B, T)
    diff = (logps.detach() - batch.sampler_logprobs.to(logps.device)).abs()[mask]  # (n,)
    if diff.numel() == 0:
        return total, largest
    return total + float(diff.sum()), max(largest, float(diff.max()))


# ---- helpers: seeding, LoRA targets, atomic writes, checkpoints ---------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator, cuda included


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # as a tensor and plain numbers, so the file loads with torch.load(weights_only=True)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(
    path: Path,
    weights: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict[str, Any] | None,
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "weights": {name: w.cpu() for name, w in weights.items()},
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def restore_checkpoint(
    path: Path, parameters: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {state.get('format')}, expected {CHECKPOINT_FORMAT}"
        )
    weights = state["weights"]
    trainable = {n for n, p in parameters.items() if p.requires_grad}
    if set(weights) != trainable:
        missing, unknown = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
        raise ValueError(
            f"{path} does not fit this learner (missing {missing[:3]}, unknown {unknown[:3]}): "
            "was it written with other LoRA settings or by full fine-tuning?"
        )
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return int(state["step"]), dict(state["extra"])
