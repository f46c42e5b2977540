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
- ``old_logps`` are the *sampler's* log-probs by default: the sampler is the behaviour policy
  that drew the tokens. With μ = 1 the ratio starts at exp(learner - sampler), 1 up to the
  numerical gap between the two engines, and the clip also bounds that gap. TRL uses the
  learner's own detached log-probs (``old_logps="learner"`` here), which hides the gap.
- LoRA's "all-linear" means the linear layers of the language model: the vision tower and
  merger stay frozen, which is also what vLLM's runtime LoRA applies adapters to.
- With LoRA the KL reference is the same model with the adapter disabled: no memory cost.
  Full fine-tuning keeps a frozen copy when beta > 0 (one more set of weights, no gradients
  or optimizer state; e.g. 15 GiB for a 7B model in bf16).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from magsrl.models.device import pick_device, pick_dtype
from magsrl.models.loading import load_processor
from magsrl.proto.rollout import RolloutResult
from magsrl.trainer.grpo import batch_normaliser, grpo_loss
from magsrl.trainer.learner_batch import (
    Batch,
    collate,
    load_policy,
    placeholder_ids,
    sequence_logprobs,
)
from magsrl.trainer.run_config import RunConfig

END_OF_TURN = "<|im_end|>"
OldLogps = Literal["sampler", "learner"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")  # not copied: save_pretrained writes them
CHECKPOINT_FORMAT = 1  # bumped when the checkpoint's layout changes
# Metrics averaged over completion tokens (over micro-batches and passes), from grpo_loss.
TOKEN_METRICS = ("clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean", "adv_abs_mean", "kl")


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
        old_logps: OldLogps = "sampler",
    ) -> None:
        """``min_pixels``/``max_pixels`` must be the policy's image bounds (its
        ``min_image_pixels``/``max_image_pixels_model``), so images become the same tokens.
        ``dtype`` auto is bf16 on cuda and fp32 on CPU."""
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
        tokenizer = self.processor.tokenizer
        self.eos_id = int(tokenizer.convert_tokens_to_ids(END_OF_TURN))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)
        model, self.reference = load_policy(self.model_dir, config, self.device, self.dtype)
        self.placeholder_ids = placeholder_ids(model)
        self.model = model
        self.optimizer = torch.optim.AdamW(
            self.trainable_parameters(),
            lr=config.grpo.learning_rate,
            weight_decay=config.grpo.weight_decay,
        )
        self.step_count = 0

    # ---- parameters ---------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        """The weights the optimizer changes, by name (LoRA A/B, or every weight)."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    # ---- batches and log-probs ----------------------------------------------------------
    def collate(self, results: Sequence[RolloutResult]) -> Batch:
        return collate(results, self.processor, self.pad_id)

    def _forward_logprobs(
        self, batch: Batch, model: nn.Module, temperature: float | None = None
    ) -> Tensor:
        t = self.config.grpo.temperature if temperature is None else temperature
        return sequence_logprobs(
            model,
            batch.to(self.device),
            t,
            pad_id=self.pad_id,
            placeholder_ids=self.placeholder_ids,
        )

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
        old_logps: Tensor | OldLogps = "sampler",
        ref_logps: Tensor | None = None,
        normaliser: float | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The GRPO loss of one (micro-)batch with grad, its (B, T) log-probs, and metrics.
        ``old_logps``: a (B, T) tensor, the sampler's (the default, see the module docstring)
        or "learner" (these very log-probs, detached: the ratio is exactly 1)."""
        logps = self._forward_logprobs(batch, self.model)  # (B, T)
        if isinstance(old_logps, Tensor):
            old = old_logps
        elif old_logps == "learner":
            old = logps.detach()
        else:
            old = batch.sampler_logprobs.to(self.device)
        loss, metrics = grpo_loss(
            logps,
            old,
            advantages.to(self.device),
            batch.completion_mask.to(self.device),
            self.loss_config,
            ref_logps,
            normaliser=normaliser,
        )
        return loss, logps, metrics

    # ---- the optimizer step -------------------------------------------------------------
    def step(self, results: Sequence[RolloutResult], advantages: Tensor) -> dict[str, float]:
        """μ optimizer updates on ``results`` with per-sequence ``advantages`` (N,) (zero-
        variance groups already dropped by the caller, if wanted). Returns the step's metrics:
        loss, grad_norm (before clipping), logprob_diff (mean |learner - sampler| over sampled
        tokens, before the update; with LoRA dropout > 0 it includes the dropout noise), clip
        fractions, ratio, kl (beta > 0), tokens, time."""
        started = time.perf_counter()
        if len(results) != advantages.shape[0]:
            raise ValueError(f"{len(results)} results but {advantages.shape[0]} advantages")
        if not results:
            raise ValueError("a step needs at least one rollout result")
        grpo = self.config.grpo
        # Similar lengths share a micro-batch (less padding); the loss does not depend on order.
        order = sorted(
            range(len(results)), key=lambda i: sum(len(s.ids) for s in results[i].segments)
        )
        chunks = [
            order[i : i + grpo.micro_batch_size]
            for i in range(0, len(order), grpo.micro_batch_size)
        ]
        batches = [self.collate([results[i] for i in chunk]) for chunk in chunks]
        advs = [advantages.detach().float()[torch.tensor(chunk)] for chunk in chunks]
        norm = batch_normaliser([b.completion_mask for b in batches], self.loss_config)
        refs = [self.ref_logprobs(b) if self.loss_config.beta > 0 else None for b in batches]
        olds: list[Tensor | OldLogps] = [self.old_logps] * len(batches)
        if self.old_logps == "learner" and grpo.num_iterations > 1:
            # Fixed before the first update, so later passes compare against it.
            olds = [self.logprobs(b) for b in batches]

        sums: dict[str, float] = {}
        weight = 0.0
        diff_sum = diff_max = loss_sum = grad_sum = 0.0
        params = self.trainable_parameters()
        max_norm = grpo.max_grad_norm if grpo.max_grad_norm > 0 else float("inf")
        nonfinite = False
        self.model.train()
        for it in range(grpo.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for batch, adv, ref, old in zip(batches, advs, refs, olds, strict=True):
                loss, logps, m = self.loss(
                    batch, adv, old_logps=old, ref_logps=ref, normaliser=norm
                )
                loss.backward()
                loss_sum += m["loss"]
                weight += m["tokens"]
                for name in TOKEN_METRICS:
                    if name in m:
                        sums[name] = sums.get(name, 0.0) + m[name] * m["tokens"]
                if it == 0:
                    diff_sum, diff_max = _accumulate_diff(logps, batch, diff_sum, diff_max)
            grad = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            grad_sum += grad
            if not (np.isfinite(loss_sum) and np.isfinite(grad)):
                nonfinite = True  # an update with NaN/inf would poison the weights: skip it
                break
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not nonfinite:
            self.step_count += 1

        passes = grpo.num_iterations
        tokens = sum(b.completion_tokens for b in batches)
        metrics = {name: total / max(weight, 1.0) for name, total in sums.items()}
        metrics.update(
            loss=loss_sum / passes,
            grad_norm=grad_sum / passes,
            logprob_diff=diff_sum / max(tokens, 1),
            logprob_diff_max=diff_max,
            tokens=float(tokens),
            sequences=float(len(results)),
            lr=float(self.optimizer.param_groups[0]["lr"]),
            step=float(self.step_count),
            step_time_s=time.perf_counter() - started,
        )
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
            if not self.config.lora.enabled:
                for item in self.model_dir.iterdir():  # tokenizer, processor and chat files
                    weights = item.suffix in WEIGHT_SUFFIXES or item.name.endswith(".index.json")
                    if item.is_file() and not weights:
                        shutil.copyfile(item, tmp / item.name)
            self.model.save_pretrained(str(tmp))
        return Path(path)

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


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yields a temp folder beside ``path``; on success it becomes ``path`` by rename, so a
    reader never sees a half-written folder. An existing ``path`` is moved aside first (one
    folder per version is the usual case, and that rename is then the only step)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, aside / path.name)
            os.replace(tmp, path)
            shutil.rmtree(aside)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must never expose a file still in the page cache
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
