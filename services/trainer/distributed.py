"""The learner as one rank of an FSDP2 group (``torch.distributed`` under torchrun): the same
``Learner`` (loss, optimizer loop, saving) with the model sharded and the step's results
split over the ranks, so that N ranks take exactly the update one process would take.

- Sharding: ``fully_shard`` on each decoder layer and each vision block, then on the root
  (torchtitan's order; a layer's weights are gathered only while it runs). On cuda, full
  fine-tuning computes in bf16 over fp32 master weights and gradients are reduced in fp32
  (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``); LoRA keeps its bf16 base
  and fp32 adapters as in-process (``param_dtype=None``); on CPU (gloo) all fp32.
- The step: every rank receives all results and keeps its slice (sorted by length, dealt
  round-robin, so the ranks' token counts are close). The loss normaliser (tokens, or
  sequences, of the whole step) is all-reduced, and gradients are summed, not averaged
  (``set_gradient_divide_factor(1)``): the gradient is the 1-rank gradient.
- Every rank runs the same number of micro-batches: FSDP2's all-gathers are collectives, and
  a rank with fewer forwards leaves the others waiting (gloo resets the connection after
  about 18 s; NCCL hangs). A short rank pads with a copy of a micro-batch whose completion
  mask is zero: no loss, no gradient, no metrics. Every micro-batch must carry images, or
  none (the vision blocks' all-gathers run only when there are pixels).
- Saving: the whole state is gathered to rank 0 (``get_model_state_dict(full_state_dict=
  True, cpu_offload=True)``), which writes an ordinary peft adapter folder or a whole model
  folder, as the 1-rank learner. Checkpoints are the 1-rank learner's file format (optimizer
  state keyed by trainable-parameter index), so a run can change its rank count on resume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from magsrl.common.files import atomic_directory, atomic_path
from magsrl.proto.rollout import RolloutResult
from magsrl.trainer.learner import (
    CHECKPOINT_FORMAT,
    Learner,
    OldLogps,
    _rng_state,
    _set_rng_state,
)
from magsrl.trainer.learner_batch import Batch, vision_tower
from magsrl.trainer.run_config import RunConfig

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)


def rank_slice(results: Sequence[RolloutResult], rank: int, world: int) -> list[int]:
    """Indices of the results ``rank`` trains on: sorted by length and dealt round-robin, so
    each rank gets long and short episodes alike. Empty when there are fewer results than
    ranks (the rank then only pads)."""
    order = sorted(range(len(results)), key=lambda i: sum(len(s.ids) for s in results[i].segments))
    return order[rank::world]


def shard_layers(model: nn.Module) -> list[nn.Module]:
    """The blocks sharded on their own: the decoder's layers and the vision tower's blocks."""
    blocks = list(getattr(model.get_decoder(), "layers", []))
    if not blocks:
        raise ValueError(f"{type(model).__name__}: no decoder layers to shard")
    tower = vision_tower(model)
    if tower is not None:
        blocks += list(getattr(tower[1], "blocks", []))
    return blocks


def shard(model: nn.Module, device: torch.device, *, cast: bool = True) -> nn.Module:
    """``fully_shard`` per decoder layer and vision block, then the root. On cuda, ``cast``
    computes in bf16 over the fp32 master weights (full fine-tuning); without it each weight
    computes in its own dtype, as the in-process learner: LoRA's bf16 base and fp32 adapters
    (FSDP2 all-gathers mixed dtypes as bytes; only trainable weights must share one dtype).
    Gradients are reduced in fp32."""
    policy = MixedPrecisionPolicy()  # CPU: all fp32, as the in-process learner
    if device.type == "cuda":
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if cast else None, reduce_dtype=torch.float32
        )
    for block in shard_layers(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Each rank's loss already divides by the whole step's normaliser: sum, not mean.
            # As a plain SUM (no NCCL PreMulSum, which gloo lacks; FSDP2 then divides by 1).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


class DistributedLearner(Learner):
    """One rank's learner. The process group must be initialised (``learner_rank``); every
    rank must call ``step``, ``save_adapter`` and the checkpoint methods together."""

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
        if not dist.is_initialized():
            raise RuntimeError("DistributedLearner needs torch.distributed (run under torchrun)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.aliases: set[str] = set()  # tied parameters' second names (_wrap)
        super().__init__(
            model_dir,
            config,
            device,
            dtype,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            old_logps=old_logps,
            image_store_dir=image_store_dir,
        )

    # ---- hooks of Learner -----------------------------------------------------------------
    def _wrap(self, model: nn.Module) -> nn.Module:
        # Tied weights (lm_head = embed_tokens): the gathered state holds them as two copies,
        # which save_pretrained no longer sees as one; the later names are dropped on save.
        seen: set[int] = set()
        self.aliases = set()
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                self.aliases.add(name)
            seen.add(id(param))
        if self.reference is not None:  # full fine-tuning's KL reference: sharded too
            self.reference = shard(self.reference, self.device)
        return shard(model, self.device, cast=not self.config.lora.enabled)

    def _micro_batches(
        self, results: Sequence[RolloutResult], advantages: Tensor
    ) -> tuple[list[Batch], list[Tensor]]:
        mine = rank_slice(results, self.rank, self.world)
        own = [results[i] for i in mine]
        batches, advs = super()._micro_batches(own, advantages[mine]) if own else ([], [])
        # [micro-batches, any with images, any without], the maximum over the ranks.
        flags = torch.tensor(
            [
                len(batches),
                int(any(b.pixel_values is not None for b in batches)),
                int(any(b.pixel_values is None for b in batches)),
            ],
            device=self.device,  # NCCL reduces only device tensors
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if int(flags[1]) and int(flags[2]):
            raise ValueError(
                "some micro-batches carry images and others none: the FSDP ranks would run "
                "different vision-block collectives; give every rollout its images"
            )
        most = int(flags[0])
        if len(batches) < most:
            # Equal micro-batch counts on every rank: pad with a zero-mask copy of a real one.
            pad = batches[0] if batches else self.collate([results[0]])
            blank = replace(pad, completion_mask=torch.zeros_like(pad.completion_mask))
            zeros = torch.zeros(blank.rows)
            batches += [blank] * (most - len(batches))
            advs += [zeros] * (len(batches) - len(advs))
        return batches, advs

    def _normaliser(self, batches: list[Batch]) -> float:
        """The whole step's denominator: tokens and rows summed over the ranks (padding
        micro-batches, with no completion tokens, count for nothing)."""
        real = [b for b in batches if b.completion_tokens > 0]
        counts = torch.tensor(
            [float(sum(b.completion_tokens for b in real)), float(sum(b.rows for b in real))],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(counts)
        tokens, rows = int(counts[0]), int(counts[1])
        # grpo.batch_normaliser's formulas, on the global counts.
        aggregation = self.loss_config.loss_aggregation
        if aggregation == "token":
            return float(max(1, tokens))
        if aggregation == "sequence":
            return float(max(1, rows))
        assert self.loss_config.max_completion_length is not None  # LossConfig checked it
        return float(max(1, rows) * self.loss_config.max_completion_length)

    def _clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Global norm over the sharded gradients (DTensors), then clipping with it: the
        norm ``clip_grad_norm_`` returns for DTensor gradients is itself a DTensor, made whole
        by ``full_tensor`` (torchtitan, torchtitan/distributed/utils.py ``clip_grad_norm_``)."""
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, 2.0)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return float(total)

    def _reduce_totals(self, totals: dict[str, float]) -> dict[str, float]:
        """Sums, minima (``*_min``) and maxima (``*_max``) over the ranks. Ranks may hold
        different names (a rank with only padding has none): the union is reduced."""
        names: list[list[str]] = [[] for _ in range(self.world)]
        dist.all_gather_object(names, sorted(totals))
        union = sorted({n for part in names for n in part})
        out: dict[str, float] = {}
        for kind, op, missing in (
            ("_min", dist.ReduceOp.MIN, float("inf")),
            ("_max", dist.ReduceOp.MAX, float("-inf")),
            ("", dist.ReduceOp.SUM, 0.0),
        ):
            chosen = [
                n for n in union if (n.endswith(kind) if kind else not n.endswith(("_min", "_max")))
            ]
            if not chosen:
                continue
            values = torch.tensor(
                [totals.get(n, missing) for n in chosen], dtype=torch.float64, device=self.device
            )
            dist.all_reduce(values, op=op)
            out.update(zip(chosen, values.tolist(), strict=True))
        return out

    # ---- saving ---------------------------------------------------------------------------
    def _full_state(self) -> dict[str, Tensor]:
        """The whole model's state on rank 0's host (every rank must call this; the others
        get an empty dict)."""
        return get_model_state_dict(self.model, options=GATHER)

    def save_adapter(self, path: Path) -> Path:
        state = self._full_state()
        if self.rank == 0:
            with atomic_directory(Path(path)) as tmp:
                if self.config.lora.enabled:
                    # peft keeps the adapter's entries of the full state: a peft folder.
                    self.model.save_pretrained(str(tmp), state_dict=state)
                else:
                    kept = {k: v for k, v in state.items() if k not in self.aliases}
                    self._save_full(tmp, kept)
        dist.barrier()
        return Path(path)

    def _trainable_names(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def save_checkpoint(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        state = self._full_state()
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=GATHER)
        if self.rank != 0:
            dist.barrier()
            return
        names = self._trainable_names()
        index = {n: i for i, n in enumerate(names)}
        # The 1-rank file: optimizer state keyed by the trainable parameters' order.
        plain_optim = {
            "state": {index[n]: s for n, s in optim["state"].items()},
            "param_groups": [
                {**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]
            ],
        }
        saved = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step_count,
            "weights": {n: state[n] for n in names},
            "optimizer": plain_optim,
            "rng": _rng_state(),
            "extra": extra or {},
        }
        with atomic_path(Path(path)) as tmp:
            torch.save(saved, tmp)
        dist.barrier()

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Every rank reads the file (on a storage all nodes see, as the model folder)."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path}: checkpoint format {saved.get('format')}, expected {CHECKPOINT_FORMAT}"
            )
        names = self._trainable_names()
        if set(saved["weights"]) != set(names):
            raise ValueError(
                f"{path} does not fit this learner: was it written with other LoRA settings "
                "or by full fine-tuning?"
            )
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.model, saved["weights"], options=options)
        optim = saved["optimizer"]
        named = {
            "state": {names[i]: s for i, s in optim["state"].items()},
            "param_groups": [
                {**g, "params": [names[i] for i in g["params"]]} for g in optim["param_groups"]
            ],
        }
        set_optimizer_state_dict(self.model, self.optimizer, named, options=options)
        _set_rng_state(saved["rng"])
        self.step_count = int(saved["step"])
        return dict(saved["extra"])


def init_process_group(device: str = "auto") -> torch.device:
    """Joins torchrun's group (nccl on cuda, gloo on CPU); returns this rank's device."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local)  # "cuda" is then this rank's GPU
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device("cpu")
