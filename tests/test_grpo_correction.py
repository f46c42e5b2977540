"""Rollout/train mismatch correction (token TIS, sequence masking), the dual clip, composed
advantages and the entropy instrument, each against a slow, obvious reference."""

from __future__ import annotations

import math

import pytest
import torch

from magsrl.trainer.grpo import (
    LossConfig,
    composed_advantages,
    group_advantages,
    grpo_loss,
    token_logprobs_entropy,
)


def reference_corrected_loss(
    logps: torch.Tensor,
    old: torch.Tensor,
    sampler: torch.Tensor | None,
    adv: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
) -> torch.Tensor:
    """Token by token, scalar ops, token aggregation: PPO's pessimistic bound, then (A < 0)
    at most -A * c, times min(old/sampler, cap), zero for a sequence whose mean log IS ratio
    is outside +-log(threshold). The denominator counts every completion token."""
    rows, cols = logps.shape
    total, count = logps.new_zeros(()), 0
    for b in range(rows):
        tokens = [t for t in range(cols) if mask[b, t]]
        count += len(tokens)
        if sampler is not None and cfg.seq_mask_threshold is not None and tokens:
            mean_log = sum(float(old[b, t] - sampler[b, t]) for t in tokens) / len(tokens)
            if abs(mean_log) > math.log(cfg.seq_mask_threshold):
                continue
        for t in tokens:
            ratio = torch.exp((logps[b, t] - old[b, t]).clamp(-20, 20))
            a = adv[b]
            clipped = ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
            term = torch.maximum(-ratio * a, -clipped * a)
            if cfg.clip_ratio_c is not None and a < 0:
                term = torch.minimum(term, -a * cfg.clip_ratio_c)
            if sampler is not None and cfg.tis_cap is not None:
                term = term * min(math.exp(float(old[b, t] - sampler[b, t])), cfg.tis_cap)
            total = total + term
    return total / max(1, count)


def random_case(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows, cols = 5, 7
    logps = -torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 3
    # Wide gaps, so that the clip, the dual clip and the TIS cap are all active somewhere.
    old = logps + torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 1.5
    sampler = old + torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 1.0
    sampler[1] = old[1] + 1e-4  # one sequence almost on-policy: kept by a tight threshold
    mask = torch.rand(rows, cols, generator=gen) < 0.8
    adv = torch.randn(rows, generator=gen, dtype=torch.float64)
    return {"logps": logps, "old": old, "sampler": sampler, "mask": mask, "adv": adv}


CONFIGS = [
    pytest.param({}, id="defaults-tis2-dual3"),
    pytest.param({"tis_cap": None, "clip_ratio_c": None}, id="plain"),
    pytest.param({"tis_cap": 1.5, "clip_ratio_c": 2.0}, id="tight"),
    pytest.param({"seq_mask_threshold": 1.01}, id="seq-mask"),
    pytest.param({"tis_cap": None, "seq_mask_threshold": 2.0}, id="seq-mask-only"),
]


@pytest.mark.parametrize("overrides", CONFIGS)
@pytest.mark.parametrize("seed", range(4))
def test_corrected_loss_matches_loop_reference(overrides: dict[str, float], seed: int) -> None:
    """Pins the IS weight taken the wrong way round (sampler/old), a weight that carries
    gradient, a dual clip applied to positive advantages, or a masked sequence still in the
    loss."""
    case = random_case(seed)
    cfg = LossConfig(**overrides)
    logps = case["logps"].clone().requires_grad_(True)
    loss, metrics = grpo_loss(
        logps, case["old"], case["adv"], case["mask"], cfg, sampler_logps=case["sampler"]
    )
    (grad,) = torch.autograd.grad(loss, logps)
    ref_in = case["logps"].clone().requires_grad_(True)
    expected = reference_corrected_loss(
        ref_in, case["old"], case["sampler"], case["adv"], case["mask"], cfg
    )
    expected = expected + 0 * ref_in.sum()
    (expected_grad,) = torch.autograd.grad(expected, ref_in)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    keep = case["mask"]
    is_ratio = torch.exp(case["old"] - case["sampler"])[keep]
    assert metrics["is_ratio_max"] == pytest.approx(float(is_ratio.max()))
    assert metrics["is_ratio_min"] == pytest.approx(float(is_ratio.min()))
    mismatch_kl = float((case["sampler"] - case["old"])[keep].mean())
    assert metrics["mismatch_kl"] == pytest.approx(mismatch_kl)
    if cfg.tis_cap is not None:
        assert metrics["tis_frac"] == pytest.approx(float((is_ratio > cfg.tis_cap).float().mean()))
        assert metrics["tis_frac"] > 0
    if cfg.seq_mask_threshold is not None:
        assert metrics["seq_masked"] < metrics["sequences"]  # the near on-policy row stays
        if cfg.seq_mask_threshold < 1.1:
            assert metrics["seq_masked"] > 0


def test_dual_clip_caps_a_negative_advantage_token() -> None:
    """The issue's case: one token with A = -1 and ratio 365 added 365 to the loss; with verl's
    clip_ratio_c = 3 it adds 3 and gets no gradient."""
    logps = torch.tensor([[math.log(365.0)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1)
    adv = torch.tensor([-1.0], dtype=torch.float64)
    plain, _ = grpo_loss(logps, old, adv, mask, LossConfig(clip_ratio_c=None))
    loss, metrics = grpo_loss(logps, old, adv, mask, LossConfig())
    assert plain.item() == pytest.approx(365.0)
    assert loss.item() == pytest.approx(3.0)
    (grad,) = torch.autograd.grad(loss, logps)
    assert grad.item() == 0.0 and metrics["dual_clip_frac"] == 1.0


def test_on_policy_batch_needs_no_correction() -> None:
    """Learner == sampler: every IS weight is 1, nothing is truncated or masked, and the loss
    equals the uncorrected one (the correction must not change an exact on-policy step)."""
    case = random_case(0)
    old = case["logps"]
    cfg = LossConfig(seq_mask_threshold=1.001)
    corrected, metrics = grpo_loss(
        case["logps"], old, case["adv"], case["mask"], cfg, sampler_logps=old
    )
    plain, _ = grpo_loss(case["logps"], old, case["adv"], case["mask"], cfg)
    torch.testing.assert_close(corrected, plain)
    assert metrics["corrected_frac"] == 0 and metrics["seq_masked"] == 0
    assert metrics["is_ratio_min"] == metrics["is_ratio_max"] == 1.0
    assert metrics["mismatch_kl"] == 0 and metrics["mismatch_k3"] == 0


def test_huge_log_ratio_with_zero_advantage_is_not_nan() -> None:
    """exp(800) overflows to inf and inf * A=0 is NaN: the log-ratio is clamped (as verl)."""
    logps = torch.tensor([[800.0, -1.0]], requires_grad=True)
    old = torch.zeros(1, 2)
    loss, _ = grpo_loss(logps, old, torch.zeros(1), torch.ones(1, 2), LossConfig())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"clip_ratio_c": 1.0}, "clip_ratio_c", id="dual-clip-1"),
        pytest.param({"tis_cap": 0.5}, "tis_cap", id="tis-below-1"),
        pytest.param({"seq_mask_threshold": 1.0}, "seq_mask_threshold", id="threshold-1"),
    ],
)
def test_correction_settings_are_checked(kwargs: dict[str, float], match: str) -> None:
    """A cap below 1 would shrink every on-policy token; a dual clip of 1 would zero A < 0."""
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def reference_composed(
    rewards: list[float], primary: list[float], g: int, scale: bool
) -> list[float]:
    out = []
    for k in range(0, len(rewards), g):
        r, p = rewards[k : k + g], primary[k : k + g]
        mean = sum(r) / g
        if max(r) == min(r):
            out += [0.0] * g
            continue
        denom = 1.0
        if scale and max(p) != min(p):
            pm = sum(p) / g
            denom = math.sqrt(sum((x - pm) ** 2 for x in p) / (g - 1)) + 1e-4
        out += [(x - mean) / denom for x in r]
    return out


def test_format_alone_no_longer_acts_like_accuracy() -> None:
    """The issue's hole: an all-correct group with format rewards [1.1, 1.1, 1.1, 1.0] got
    advantages [0.5, 0.5, 0.5, -1.5] under scale_rewards=group, like a right/wrong split.
    Composed, the std comes from accuracy (zero here), so they stay at the 0.1 scale."""
    rewards = torch.tensor([1.1, 1.1, 1.1, 1.0])
    accuracy = torch.ones(4)
    before = group_advantages(rewards, 4)
    after = composed_advantages(rewards, accuracy, 4)
    torch.testing.assert_close(before, torch.tensor([0.5, 0.5, 0.5, -1.5]), atol=1e-2, rtol=0)
    torch.testing.assert_close(after, torch.tensor([0.025, 0.025, 0.025, -0.075]))


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_composed_advantages_match_reference(scale: bool, seed: int) -> None:
    """Pins the std taken from the total rather than the primary reward, or a group whose
    primary reward is constant still divided by eps."""
    gen = torch.Generator().manual_seed(seed)
    g = 4
    primary = (torch.rand(12, generator=gen) < 0.5).double()
    primary[:4] = 1.0  # one all-correct group
    rewards = primary - 0.1 * (torch.rand(12, generator=gen) < 0.3).double()
    got = composed_advantages(rewards, primary, g, scale_by_std=scale)
    expected = reference_composed(rewards.tolist(), primary.tolist(), g, scale)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype))
    # Without shaping terms it is exactly GRPO's advantage.
    torch.testing.assert_close(
        composed_advantages(primary, primary, g, scale_by_std=scale),
        group_advantages(primary, g, scale_by_std=scale),
    )


def test_entropy_matches_torch_distributions() -> None:
    """The logged entropy is that of softmax(logits / T) at each position, and asking for it
    leaves the log-probs and their gradient unchanged."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    logps, entropy = token_logprobs_entropy(logits, ids, 0.7)
    expected = torch.distributions.Categorical(logits=logits.detach() / 0.7).entropy()
    torch.testing.assert_close(entropy, expected)
    logps.sum().backward()
    reference = torch.log_softmax(logits.detach().clone().requires_grad_(True) / 0.7, dim=-1)
    torch.testing.assert_close(logps.detach(), reference.gather(-1, ids[..., None]).squeeze(-1))
