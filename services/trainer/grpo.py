"""The GRPO policy loss as pure tensor functions: group advantages, sampled-token log-probs and
the clipped surrogate with an optional k3 KL. No I/O, no model; the learner calls these.

How it differs from the papers:
- GRPO (DeepSeekMath) clips symmetrically and averages per sequence first; here the default is
  DAPO's asymmetric clip (``eps_high > eps_low``) and token-level aggregation, with
  ``"sequence"`` (GRPO) and ``"dr_grpo"`` (sum over a constant) as options.
- KL to the reference is off by default (``beta=0``, as in DAPO and Dr. GRPO).
- Advantages of a group whose rewards are all equal are exactly 0 (not ``0 / eps`` noise),
  and such groups can be dropped (``nonzero_variance_groups``).
- As in MGPO, tool/observation tokens carry mask 0: they get neither loss nor gradient.
- Rollout/train mismatch correction (on by default), as verl's rollout correction
  (``verl/trainer/ppo/mismatch_helper.py``, docs/advance/rollout_is.md): the PPO ratio is
  taken against the learner's own pre-update log-probs, and each token's surrogate is
  weighted by the truncated importance ratio ``min(exp(old - sampler), tis_cap)`` between
  learner and sampler (TIS, verl's ``tis_imp_ratio_cap`` / ``rollout_is_threshold``, 2.0).
  Optionally, sequences whose geometric-mean ratio leaves ``[1/t, t]`` are masked (verl's
  geometric rejection). Masked sequences stay in the normaliser (a step's scale does not
  jump with the masking rate; verl drops them from it).
- Dual clip for negative advantages (verl ``compute_policy_loss_vanilla``, ``clip_ratio_c``
  = 3 in ``verl/trainer/ppo/core_algos.py``): with A < 0 a token's loss is at most
  ``-A * clip_ratio_c``, so one token with ratio 365 no longer adds 365 |A|.
- The advantage of a composed reward (``composed_advantages``): the group std comes from
  the primary reward (accuracy) only, so shaping terms move advantages at their own scale.

Micro-batching (gradient accumulation) is exact when every micro-batch divides by the same
full-batch denominator::

    norm = batch_normaliser([mb.mask for mb in step], cfg)
    for mb in step:
        loss, metrics = grpo_loss(..., mb.mask, cfg, normaliser=norm)
        loss.backward()  # the summed gradients equal one full-batch backward

Averaging per-micro-batch token means instead would overweight micro-batches with few tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

LossAggregation = Literal["token", "sequence", "dr_grpo"]
LOSS_AGGREGATIONS: tuple[str, ...] = ("token", "sequence", "dr_grpo")

# token_logprobs works on row chunks of about this many logits (256 MiB in float32), so a
# 150k-token vocabulary never needs a second full (B, T, V) tensor next to the model's logits.
_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class LossConfig:
    """What ``grpo_loss`` needs from the run config (``RunConfig.loss_config()`` builds it)."""

    eps_low: float = 0.2  # the ratio is clipped below at 1 - eps_low
    eps_high: float = 0.28  # ... and above at 1 + eps_high (DAPO's clip-higher)
    beta: float = 0.0  # KL weight; 0 turns the KL term and the reference model off
    loss_aggregation: LossAggregation = "token"
    max_completion_length: int | None = None  # dr_grpo's constant: most generated tokens
    # Dual clip (verl clip_ratio_c): with A < 0 the per-token loss is capped at -A * c.
    clip_ratio_c: float | None = 3.0
    # Token-level TIS: the surrogate is weighted by min(exp(old - sampler), tis_cap).
    tis_cap: float | None = 2.0
    # Sequence masking: a sequence whose geometric-mean IS ratio is outside [1/t, t] gets no
    # loss (None: off). verl recommends 1.0002-1.001 for its geometric level.
    seq_mask_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("eps_low", "eps_high"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value} must be in (0, 1] (typical: 0.2 / 0.28)")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0 (0 turns the KL off)")
        if self.loss_aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(
                f"loss_aggregation={self.loss_aggregation!r} is not one of {LOSS_AGGREGATIONS}"
            )
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1.0:
            raise ValueError(
                f"clip_ratio_c={self.clip_ratio_c} must be > 1 (verl: 3.0), or None (off)"
            )
        if self.tis_cap is not None and not self.tis_cap >= 1.0:
            raise ValueError(f"tis_cap={self.tis_cap} must be >= 1 (verl: 2.0), or None for off")
        if self.seq_mask_threshold is not None and not self.seq_mask_threshold > 1.0:
            raise ValueError(
                f"seq_mask_threshold={self.seq_mask_threshold} must be > 1 (e.g. 1.001), or None"
            )
        if self.loss_aggregation == "dr_grpo" and (
            self.max_completion_length is None or self.max_completion_length < 1
        ):
            raise ValueError(
                "loss_aggregation='dr_grpo' divides by a constant: set max_completion_length "
                "to the most tokens one sample can generate (max_new_tokens * max_rounds)"
            )


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    if rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}: lay them "
            "out group-contiguous, N = B * G"
        )
    return rewards.view(-1, group_size)  # (B, G)


def nonzero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(N,) bool: True for samples whose group's rewards are not all equal. A group that all
    passed or all failed teaches nothing, and dropping it keeps it out of the token count."""
    grouped = _grouped(rewards, group_size)  # (B, G)
    varied = grouped.amax(dim=1) != grouped.amin(dim=1)  # (B,)
    return varied.repeat_interleave(group_size)  # (N,)


def group_advantages(
    rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4
) -> Tensor:
    """(N,) advantages from (N,) rewards laid out group-contiguous (N = B * G):
    ``(r - group mean) / (group std + eps)``, or only centred when ``scale_by_std`` is False
    (Dr. GRPO: the std favours groups that are almost all right or all wrong).

    The std is the unbiased one (as TRL). Zero-variance groups get exactly 0."""
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    grouped = _grouped(rewards.detach().to(dtype), group_size)  # (B, G)
    if group_size == 1:  # no comparison is possible; the std would be NaN
        return torch.zeros_like(grouped).view(-1)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    varied = (grouped.amax(dim=1) != grouped.amin(dim=1)).unsqueeze(1)  # (B, 1)
    # The mean of equal floats can differ from them in the last bit; force those groups to 0.
    return torch.where(varied, centred, torch.zeros_like(centred)).view(-1)  # (N,)


def composed_advantages(
    rewards: Tensor,
    primary: Tensor,
    group_size: int,
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> Tensor:
    """(N,) advantages of a composed reward: ``rewards`` (the total) centred within each
    group, divided by the group std of ``primary`` (the accuracy part of the total) where it
    varies, and left unscaled where it does not.

    Why: the group std makes any spread look like a full one. An all-correct group whose
    format terms differ by 0.1 would get the same +-1.5 advantages as a right/wrong split;
    here it gets +-0.1-sized ones, and accuracy drives every group where it varies. When
    ``rewards == primary`` this is ``group_advantages``."""
    if primary.shape != rewards.shape:
        raise ValueError(f"primary {tuple(primary.shape)} != rewards {tuple(rewards.shape)}")
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    grouped = _grouped(rewards.detach().to(dtype), group_size)  # (B, G)
    if group_size == 1:
        return torch.zeros_like(grouped).view(-1)
    base = _grouped(primary.detach().to(dtype), group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale_by_std:
        base_varies = (base.amax(dim=1) != base.amin(dim=1)).unsqueeze(1)  # (B, 1)
        std = base.std(dim=1, keepdim=True) + eps  # (B, 1)
        centred = torch.where(base_varies, centred / std, centred)
    varied = (grouped.amax(dim=1) != grouped.amin(dim=1)).unsqueeze(1)  # (B, 1)
    return torch.where(varied, centred, torch.zeros_like(centred)).view(-1)  # (N,)


def _row_chunks(logits: Tensor) -> list[tuple[int, int, int]]:
    rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    return [
        (b, start, min(start + rows, logits.shape[1]))
        for b in range(logits.shape[0])
        for start in range(0, logits.shape[1], rows)
    ]


class _SampledLogProbs(torch.autograd.Function):
    """log softmax(logits / t)[id], chunk by chunk, saving only the (B, T) logsumexp: autograd
    through ``log_softmax(...).gather`` would keep a full (B, T, V) copy alive for backward.
    Optionally also the (B, T) entropy of softmax(logits / t) (no gradient), from the same
    chunks, so the instrument costs no second pass over the logits."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, ids: Tensor, temperature: float, with_entropy: bool
    ) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits, fp32 log-probs
        out = torch.empty(logits.shape[:2], dtype=dtype, device=logits.device)  # (B, T)
        lse = torch.empty_like(out)  # (B, T)
        entropy = torch.zeros_like(out)  # (B, T)
        for b, s, e in _row_chunks(logits):
            block = logits[b, s:e].to(dtype) / temperature  # (n, V), the only large temporary
            lse[b, s:e] = torch.logsumexp(block, dim=-1)
            out[b, s:e] = block.gather(-1, ids[b, s:e, None]).squeeze(-1)
            if with_entropy:  # H = lse - sum(p * z)
                probs = torch.exp(block - lse[b, s:e, None])  # (n, V)
                entropy[b, s:e] = lse[b, s:e] - (probs * block).sum(dim=-1)
        out -= lse
        ctx.save_for_backward(logits, ids, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_out: Tensor, _grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        logits, ids, lse = ctx.saved_tensors
        t = ctx.temperature
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for b, s, e in _row_chunks(logits):
            block = logits[b, s:e].to(lse.dtype) / t  # (n, V)
            g_out = grad_out[b, s:e, None]  # (n, 1)
            # d logp[id] / d logit_v = (onehot_v - softmax_v) / t
            g = torch.exp(block - lse[b, s:e, None]).mul_(-g_out)  # (n, V)
            g.scatter_add_(-1, ids[b, s:e, None], g_out)
            grad[b, s:e] = g.div_(t)
        return grad, None, None, None


def token_logprobs(logits: Tensor, token_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """(B, T) log-probs of ``token_ids``; see ``token_logprobs_entropy``."""
    return token_logprobs_entropy(logits, token_ids, temperature, entropy=False)[0]


def token_logprobs_entropy(
    logits: Tensor, token_ids: Tensor, temperature: float = 1.0, *, entropy: bool = True
) -> tuple[Tensor, Tensor]:
    """(B, T) log-probs of ``token_ids`` under ``softmax(logits / temperature)``.

    ``logits[:, t]`` must already be the prediction for ``token_ids[:, t]`` (the caller does the
    one-position shift). Use the sampling temperature, or the learner's log-probs will not match
    the sampler's. Padding positions need a valid id (the pad id), not -100; mask them later.
    The result is float32 (float64 for float64 logits) so ``exp(logp - old)`` stays precise.
    ``token_logprobs_entropy`` also returns the (B, T) entropy of softmax(logits / T) at each
    position (no gradient; zeros when ``entropy`` is False)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    if token_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} != logits (B, T) {tuple(logits.shape[:2])}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    logps, ent = _SampledLogProbs.apply(logits, token_ids.long(), float(temperature), entropy)
    return logps, ent


def batch_normaliser(masks: Tensor | Sequence[Tensor], cfg: LossConfig) -> float:
    """The denominator ``grpo_loss`` divides by for a whole batch, given its mask or its
    micro-batches' masks: completion tokens (``token``), sequences (``sequence``), or
    sequences * max_completion_length (``dr_grpo``)."""
    parts = [masks] if isinstance(masks, Tensor) else list(masks)
    rows = sum(int(m.shape[0]) for m in parts)
    if cfg.loss_aggregation == "token":
        return float(max(1, sum(int(m.count_nonzero()) for m in parts)))
    elif cfg.loss_aggregation == "sequence":
        return float(max(1, rows))
    elif cfg.loss_aggregation == "dr_grpo":
        assert cfg.max_completion_length is not None  # LossConfig checked it
        return float(max(1, rows) * cfg.max_completion_length)
    else:
        raise ValueError(f"unknown loss_aggregation {cfg.loss_aggregation!r}")


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    ref_logps: Tensor | None = None,
    *,
    sampler_logps: Tensor | None = None,
    normaliser: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped GRPO surrogate with dual clip and rollout correction (plus ``beta`` * k3
    KL), and its metrics.

    logps: (B, T) the policy's log-probs of the sampled tokens, with grad.
    old_logps: (B, T) the learner's own log-probs before this step's updates (no grad,
        dropout off). With one update per batch pass ``logps.detach()`` (from a dropout-off
        forward): the ratio is then exactly 1 but its gradient is the policy gradient.
    advantages: (B,) per sequence, or (B, T) per token.
    mask: (B, T) 1 on model-generated completion tokens; 0 on prompt, tool/observation and
        padding tokens. Masked positions may hold anything (NaN, -inf): they never reach the
        loss or the gradient.
    ref_logps: (B, T) under the reference policy; needed when ``cfg.beta > 0``.
    sampler_logps: (B, T) the sampler's log-probs (the behaviour policy). When given, each
        token's surrogate is weighted by ``min(exp(old - sampler), cfg.tis_cap)`` and
        sequences outside ``cfg.seq_mask_threshold`` are masked; None: no correction.
    normaliser: the full batch's ``batch_normaliser``, when this call is one micro-batch.

    Metrics are means over completion tokens unless named otherwise: ``clip_frac_low``/
    ``clip_frac_high`` (the clip is active: ratio below 1 - eps_low with A < 0, above
    1 + eps_high with A > 0), ``dual_clip_frac`` (A < 0 and ratio > clip_ratio_c),
    ``ratio_mean``/``ratio_min``/``ratio_max`` (the PPO ratio), ``is_ratio_*`` (learner over
    sampler, before truncation), ``tis_frac`` (tokens whose IS weight was truncated),
    ``corrected_frac`` (tokens truncated or in a masked sequence), ``mismatch_kl`` (k1,
    mean(sampler - old): KL(sampler || learner) as verl's ``mismatch_kl``), ``mismatch_k3``,
    ``seq_masked`` and ``sequences`` (counts), ``adv_abs_mean``, ``kl`` and ``tokens``.
    """
    if logps.dim() != 2:
        raise ValueError(f"logps must be (B, T), got shape {tuple(logps.shape)}")
    for name, other in (
        ("old_logps", old_logps),
        ("mask", mask),
        ("ref_logps", ref_logps),
        ("sampler_logps", sampler_logps),
    ):
        if other is not None and other.shape != logps.shape:
            raise ValueError(f"{name} shape {tuple(other.shape)} != logps {tuple(logps.shape)}")
    if advantages.shape == logps.shape[:1]:
        adv = advantages.detach().to(logps.dtype).unsqueeze(1)  # (B, 1)
    elif advantages.shape == logps.shape:
        adv = advantages.detach().to(logps.dtype)  # (B, T)
    else:
        raise ValueError(
            f"advantages shape {tuple(advantages.shape)} must be (B,) or (B, T) for logps "
            f"{tuple(logps.shape)}"
        )
    use_kl = cfg.beta > 0
    if use_kl and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (or set beta to 0 to turn the KL off)")

    keep = mask.bool()  # (B, T)
    weights = keep.to(logps.dtype)  # (B, T)
    adv_full = adv.expand_as(logps)  # (B, T)
    old = old_logps.detach()
    # Zero the log-ratio at masked positions before exp: garbage there (tool tokens the sampler
    # never scored) would otherwise turn the loss, or its gradient through 0 * inf, into NaN.
    # Clamped to +-20 as verl does, so exp never overflows to inf (inf * A=0 would be NaN).
    log_ratio = torch.where(keep, logps - old, 0.0).clamp(-20.0, 20.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped = ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)  # (B, T)
    per_token = torch.maximum(-ratio * adv, -clipped * adv)  # (B, T) PPO's pessimistic bound
    dual = torch.zeros_like(keep)  # (B, T) bool
    if cfg.clip_ratio_c is not None:
        cap = -adv_full * cfg.clip_ratio_c  # (B, T)
        dual = (adv_full < 0) & (per_token > cap) & keep
        per_token = torch.where(adv_full < 0, torch.minimum(per_token, cap), per_token)

    # Rollout correction: IS weights between learner (old) and sampler, never differentiated.
    truncated = torch.zeros_like(keep)  # (B, T) bool
    row_keep = torch.ones(logps.shape[0], dtype=torch.bool, device=logps.device)  # (B,)
    is_log: Tensor | None = None
    if sampler_logps is not None:
        is_log = torch.where(keep, old - sampler_logps.detach(), 0.0)  # (B, T)
        if cfg.tis_cap is not None:
            is_weight = torch.exp(is_log.clamp(max=math.log(cfg.tis_cap)))  # (B, T) <= cap
            truncated = (is_log > math.log(cfg.tis_cap)) & keep
            per_token = per_token * is_weight
        if cfg.seq_mask_threshold is not None:
            counts = weights.sum(dim=1).clamp(min=1)  # (B,)
            geo = (is_log * weights).sum(dim=1) / counts  # (B,) log of the geometric mean
            bound = math.log(cfg.seq_mask_threshold)
            row_keep = geo.abs() <= bound
    loss_weights = weights * row_keep.unsqueeze(1).to(weights.dtype)  # (B, T)

    kl: Tensor | None = None
    if use_kl:
        assert ref_logps is not None
        ref_diff = torch.where(keep, ref_logps.detach() - logps, 0.0)  # (B, T)
        kl = torch.exp(ref_diff) - ref_diff - 1.0  # (B, T) k3: unbiased, always >= 0
        per_token = per_token + cfg.beta * kl
    per_token = per_token * loss_weights  # (B, T)

    if cfg.loss_aggregation == "token":
        total = per_token.sum()
    elif cfg.loss_aggregation == "sequence":
        total = (per_token.sum(dim=1) / weights.sum(dim=1).clamp(min=1)).sum()  # sum of (B,)
    elif cfg.loss_aggregation == "dr_grpo":
        total = per_token.sum()
    else:
        raise ValueError(f"unknown loss_aggregation {cfg.loss_aggregation!r}")
    denominator = batch_normaliser(mask, cfg) if normaliser is None else normaliser
    loss = total / denominator

    with torch.no_grad():
        metrics = _loss_metrics(
            loss, ratio, adv_full, keep, weights, cfg, kl, dual, truncated, row_keep, is_log
        )
    return loss, metrics


def _masked_extremes(values: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    if not bool(keep.any()):
        one = values.new_ones(())
        return one, one
    picked = values[keep]
    return picked.min(), picked.max()


def _loss_metrics(
    loss: Tensor,
    ratio: Tensor,
    adv: Tensor,
    keep: Tensor,
    weights: Tensor,
    cfg: LossConfig,
    kl: Tensor | None,
    dual: Tensor,
    truncated: Tensor,
    row_keep: Tensor,
    is_log: Tensor | None,
) -> dict[str, float]:
    n = weights.sum().clamp(min=1)
    low = (ratio < 1.0 - cfg.eps_low) & (adv < 0) & keep  # (B, T)
    high = (ratio > 1.0 + cfg.eps_high) & (adv > 0) & keep  # (B, T)
    in_masked_row = keep & ~row_keep.unsqueeze(1)  # (B, T)
    ratio_min, ratio_max = _masked_extremes(ratio, keep)
    values: dict[str, Tensor] = {
        "loss": loss.detach(),
        "clip_frac_low": low.sum() / n,
        "clip_frac_high": high.sum() / n,
        "clip_frac": (low | high).sum() / n,
        "dual_clip_frac": dual.sum() / n,
        "ratio_mean": (ratio * weights).sum() / n,
        "ratio_min": ratio_min,
        "ratio_max": ratio_max,
        "adv_abs_mean": (adv.abs() * weights).sum() / n,
        "tokens": weights.sum(),
    }
    if is_log is not None:
        is_ratio = torch.exp(is_log.clamp(-20.0, 20.0))  # (B, T)
        is_min, is_max = _masked_extremes(is_ratio, keep)
        values.update(
            is_ratio_mean=(is_ratio * weights).sum() / n,
            is_ratio_min=is_min,
            is_ratio_max=is_max,
            tis_frac=truncated.sum() / n,
            corrected_frac=(truncated | in_masked_row).sum() / n,
            mismatch_kl=(-is_log * weights).sum() / n,
            mismatch_k3=((is_ratio - is_log - 1.0) * weights).sum() / n,
            seq_masked=(~row_keep).sum(),
            sequences=weights.new_tensor(float(row_keep.numel())),
        )
    if kl is not None:
        values["kl"] = (kl * weights).sum() / n
    # One device sync for all metrics, not one per .item().
    stacked = torch.stack([v.float() for v in values.values()]).tolist()
    return dict(zip(values, stacked, strict=True))
