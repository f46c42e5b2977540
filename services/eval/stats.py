"""The report's statistics: percentile-bootstrap confidence intervals of a mean (and of a
paired difference), McNemar's test for two arms on the same samples, and percentiles.

Pure functions over plain sequences, so each is checked against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Below this many discordant pairs McNemar's chi-square approximation is poor, and the exact
# binomial test is cheap (the usual rule of thumb: b + c < 25).
EXACT_MCNEMAR_BELOW = 25


def bootstrap_mean_ci(
    values: Sequence[float], *, confidence: float, resamples: int, seed: int
) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean of ``values``.

    A resample of n values drawn with replacement is, for the mean, only a matter of how
    often each distinct value is drawn: a multinomial over the distinct values with their
    observed shares. Drawing those counts is the same distribution as drawing indices, in
    O(resamples x distinct) rather than O(resamples x n), so 0/1 outcomes of any sample
    size cost the same. Percentiles are the inverted-CDF kind: interval ends are attained
    resample means, as in the textbook definition.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("the bootstrap needs at least one value")
    mean = float(data.mean())
    distinct, counts = np.unique(data, return_counts=True)
    if distinct.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(data.size, counts / data.size, size=resamples)
    means = draws @ distinct / data.size
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return mean, float(low), float(high)


def paired_difference_ci(
    a: Sequence[bool], b: Sequence[bool], *, confidence: float, resamples: int, seed: int
) -> tuple[float, float, float]:
    """accuracy(a) - accuracy(b) over the same samples, with the paired bootstrap interval
    (samples are resampled as pairs, so what the arms share cancels)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    return bootstrap_mean_ci(diffs, confidence=confidence, resamples=resamples, seed=seed)


def mcnemar(a_only: int, b_only: int) -> tuple[float, float, str]:
    """(statistic, two-sided p-value, method) from the discordant pair counts.

    With b = ``a_only`` and c = ``b_only``: under the null each discordant pair is a fair
    coin, so the exact test is binomial, p = min(1, 2 P(X <= min(b, c))), X ~ Bin(b + c, 1/2),
    and its statistic is b. From 25 discordant pairs on, the chi-square with continuity
    correction, (|b - c| - 1)^2 / (b + c) on one degree of freedom.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"counts must be non-negative, got {a_only} and {b_only}")
    n = a_only + b_only
    if n < EXACT_MCNEMAR_BELOW:
        tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1))
        return float(a_only), min(1.0, 2 * tail / 2**n), "exact"
    chi2 = (abs(a_only - b_only) - 1) ** 2 / n
    # The chi-square(1) survival function: P(Z^2 > x) = erfc(sqrt(x / 2)).
    return chi2, math.erfc(math.sqrt(chi2 / 2)), "chi2-cc"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation); None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None
