"""The eval report's statistics against values computed by hand (binomial sums, the
chi-square formula, bootstrap distributions small enough to enumerate)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from magsrl.eval.stats import (
    bootstrap_mean_ci,
    mcnemar,
    paired_difference_ci,
    percentile,
)


# ---- McNemar ---------------------------------------------------------------------------
def test_mcnemar_exact_matches_the_binomial_sum() -> None:
    # b=10, c=2: n=12, p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096.
    statistic, p, method = mcnemar(10, 2)
    assert (statistic, method) == (10.0, "exact")
    assert p == pytest.approx(158 / 4096, abs=1e-15)
    # Symmetric in which arm won.
    assert mcnemar(2, 10)[1] == pytest.approx(158 / 4096, abs=1e-15)


def test_mcnemar_small_and_degenerate_cases() -> None:
    assert mcnemar(3, 0)[1] == pytest.approx(2 / 8)  # 2 * C(3,0) / 2^3
    assert mcnemar(0, 0) == (0.0, 1.0, "exact")  # no discordant pair: no evidence
    assert mcnemar(5, 5)[1] == 1.0  # 2 * 638/1024 > 1 is capped
    # 24 discordant pairs are still exact: 2 * (1 + 24 + 276 + 2024 + 10626) / 2^24.
    assert mcnemar(20, 4) == (20.0, pytest.approx(2 * 12951 / 2**24, abs=1e-15), "exact")


def test_mcnemar_chi_square_with_continuity_correction() -> None:
    # From 25 discordant pairs: (|b - c| - 1)^2 / (b + c), p from chi-square(1).
    statistic, p, method = mcnemar(30, 10)
    assert method == "chi2-cc"
    assert statistic == pytest.approx(19**2 / 40)  # 9.025
    assert p == pytest.approx(0.0026631, abs=1e-7)  # chi2(1) table: sf(9.025)
    statistic, p, _ = mcnemar(20, 5)
    assert statistic == pytest.approx(14**2 / 25)  # 7.84
    assert p == pytest.approx(0.0051103, abs=1e-7)
    # The survival function used is erfc(sqrt(x/2)): 3.841 is the 5% point of chi2(1).
    assert math.erfc(math.sqrt(3.841459 / 2)) == pytest.approx(0.05, abs=1e-6)


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar(-1, 3)


# ---- bootstrap -------------------------------------------------------------------------
def test_bootstrap_of_three_outcomes_matches_the_enumerated_distribution() -> None:
    # [0, 0, 1]: a resample has k ones with k ~ Bin(3, 1/3): P(mean=0) = 8/27 > 2.5%, and
    # P(mean < 1) = 26/27 < 97.5%, so the 95% percentile interval is exactly [0, 1].
    mean, low, high = bootstrap_mean_ci([0, 0, 1], confidence=0.95, resamples=20_000, seed=3)
    assert (mean, low, high) == (pytest.approx(1 / 3), 0.0, 1.0)
    # At 40% confidence the quantiles are 30% and 70%: F(0)=0.296 < 0.3 <= F(1/3)=0.741,
    # and 0.7 <= F(1/3) too, so both ends are 1/3.
    _, low, high = bootstrap_mean_ci([0, 0, 1], confidence=0.4, resamples=200_000, seed=3)
    assert (low, high) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_bootstrap_of_fifty_fifty_matches_binomial_quantiles() -> None:
    # 50 right of 100: resample means are Bin(100, 0.5)/100. Its CDF (by the binomial sum):
    # F(39)=0.0176 < 0.025 <= F(40)=0.0284 and F(59)=0.9716 < 0.975 <= F(60)=0.9824.
    mean, low, high = bootstrap_mean_ci(
        [0.0] * 50 + [1.0] * 50, confidence=0.95, resamples=100_000, seed=0
    )
    assert (mean, low, high) == (0.5, pytest.approx(0.40), pytest.approx(0.60))


def test_bootstrap_constant_values_have_a_zero_width_interval() -> None:
    assert bootstrap_mean_ci([1, 1, 1, 1], confidence=0.95, resamples=1000, seed=0) == (
        1.0,
        1.0,
        1.0,
    )


def test_multinomial_bootstrap_equals_index_resampling() -> None:
    """Drawing counts per distinct value is the same distribution as drawing indices."""
    values = np.array([0.0, 1.0, 1.0, 2.5, 4.0, 4.0, 4.0, 7.0, 9.0, 10.0])
    _, low, high = bootstrap_mean_ci(values, confidence=0.9, resamples=200_000, seed=1)
    rng = np.random.default_rng(2)
    naive = values[rng.integers(0, values.size, size=(200_000, values.size))].mean(axis=1)
    ref_low, ref_high = np.quantile(naive, [0.05, 0.95], method="inverted_cdf")
    # Resample means are multiples of 0.05 here; the two agree to one step.
    assert low == pytest.approx(ref_low, abs=0.051)
    assert high == pytest.approx(ref_high, abs=0.051)


def test_bootstrap_is_reproducible_from_its_seed() -> None:
    values = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1]
    first = bootstrap_mean_ci(values, confidence=0.95, resamples=5000, seed=7)
    assert bootstrap_mean_ci(values, confidence=0.95, resamples=5000, seed=7) == first


def test_bootstrap_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_mean_ci([], confidence=0.95, resamples=100, seed=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci([1, 0], confidence=1.5, resamples=100, seed=0)


def test_paired_difference_bootstraps_the_per_sample_differences() -> None:
    # Differences [1, 1, 0, 0]: mean 0.5; with 4 pairs, P(all four resampled are 0) =
    # 1/16 > 2.5%, and likewise for all 1, so the 95% interval is [0, 1].
    a = [True, True, True, False]
    b = [False, False, True, False]
    assert paired_difference_ci(a, b, confidence=0.95, resamples=50_000, seed=0) == (
        0.5,
        0.0,
        1.0,
    )
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference_ci(a, b[:2], confidence=0.95, resamples=100, seed=0)


def test_percentile_interpolates_linearly() -> None:
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 95) == pytest.approx(38.5)
    assert percentile([], 50) is None
