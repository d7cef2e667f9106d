"""Robust summary statistics for timings: medians and spreads, never a single run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def iqr(values: Sequence[float]) -> float | None:
    """Inter-quartile range (linear interpolation), 0 for a single value."""
    if not len(values):
        return None
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def cv(values: Sequence[float]) -> float | None:
    """Coefficient of variation (sample std / mean); None with fewer than two values."""
    if len(values) < 2:
        return None
    mean = float(np.mean(values))
    return float(np.std(values, ddof=1) / mean) if mean else None


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# --- paired statistics for same-machine A/B comparisons (cnnbench ab) ---------------------------

#: Bootstrap resamples: enough that the interval's ends move by well under the rounds' own noise.
BOOTSTRAP_RESAMPLES = 4000
#: Above this many non-zero differences the exact signed-rank distribution gives way to the normal one.
EXACT_SIGNED_RANK_LIMIT = 60


def bootstrap_median_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median: seeded, so the same rounds always give the same verdict."""
    if not len(values):
        raise ValueError("the bootstrap needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(medians, [tail, 1 - tail])
    return float(low), float(high)


def _signed_rank_counts(ranks: Sequence[int]) -> np.ndarray:
    """How many of the 2^n sign assignments give each sum of positive (doubled, integer) ranks."""
    counts = np.zeros(sum(ranks) + 1, dtype=float)
    counts[0] = 1.0
    for rank in ranks:
        shifted = np.zeros_like(counts)
        shifted[rank:] = counts[: len(counts) - rank]
        counts = counts + shifted
    return counts


def wilcoxon_greater(differences: Sequence[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value that the paired ``differences`` tend to be above zero.

    Zeros are dropped (Wilcoxon's rule), ties get mid-ranks; exact up to ``EXACT_SIGNED_RANK_LIMIT``
    non-zero differences, then the normal approximation with tie and continuity corrections.
    """
    nonzero = [float(d) for d in differences if d != 0 and math.isfinite(d)]
    n = len(nonzero)
    if not n:
        return 1.0
    doubled = [round(2 * r) for r in _midranks_abs(nonzero)]  # doubled mid-ranks are integers
    observed = sum(r for r, d in zip(doubled, nonzero, strict=True) if d > 0)
    if n <= EXACT_SIGNED_RANK_LIMIT:
        counts = _signed_rank_counts(doubled)
        return float(counts[observed:].sum() / counts.sum())
    mean = sum(doubled) / 2
    variance = sum(r * r for r in doubled) / 4
    z = (observed - mean - 1) / math.sqrt(variance)  # continuity: one doubled-rank step is 2, half of it 1
    return 0.5 * math.erfc(z / math.sqrt(2))


def _midranks_abs(values: Sequence[float]) -> list[float]:
    """Ranks (1-based) of ``|values|``, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: abs(values[i]))
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and abs(values[order[j + 1]]) == abs(values[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
