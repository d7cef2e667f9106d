"""The paired statistics of cnnbench ab: the bootstrap interval of the median and the signed-rank test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cnnbench import stats


def brute_force_wilcoxon(differences: list[float]) -> float:
    """Every sign assignment of the mid-ranks of |d| (zeros dropped): the definition of the exact test."""
    nonzero = [d for d in differences if d != 0]
    if not nonzero:
        return 1.0
    ranks = stats._midranks_abs(nonzero)
    observed = sum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0)
    signs = list(itertools.product((0, 1), repeat=len(nonzero)))
    hits = sum(1 for s in signs if sum(r * k for r, k in zip(ranks, s, strict=True)) >= observed - 1e-9)
    return hits / len(signs)


@pytest.mark.parametrize("seed", range(12))
def test_wilcoxon_matches_its_definition_with_ties_and_zeros(seed: int) -> None:
    rng = np.random.default_rng(seed)
    differences = [float(x) for x in np.round(rng.normal(0.2, 1.0, rng.integers(1, 12)), 1)]  # rounding: ties, zeros
    assert stats.wilcoxon_greater(differences) == pytest.approx(brute_force_wilcoxon(differences), abs=1e-12)


def test_wilcoxon_extremes() -> None:
    assert stats.wilcoxon_greater([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(1 / 32)
    assert stats.wilcoxon_greater([-0.1, -0.2, -0.3]) == 1.0
    assert stats.wilcoxon_greater([0.0, 0.0]) == 1.0  # nothing but ties with zero: no evidence either way
    assert stats.wilcoxon_greater([]) == 1.0


def test_wilcoxon_normal_approximation_continues_the_exact_one() -> None:
    rng = np.random.default_rng(3)
    differences = list(rng.normal(0.25, 1.0, stats.EXACT_SIGNED_RANK_LIMIT + 1))
    approximate = stats.wilcoxon_greater(differences)
    exact_counts = stats._signed_rank_counts([round(2 * r) for r in stats._midranks_abs(differences)])
    observed = sum(round(2 * r) for r, d in zip(stats._midranks_abs(differences), differences, strict=True) if d > 0)
    exact = float(exact_counts[observed:].sum() / exact_counts.sum())
    assert approximate == pytest.approx(exact, rel=0.05)


def test_bootstrap_is_seeded_and_brackets_the_median() -> None:
    values = [0.91, 0.88, 0.95, 0.90, 0.93, 0.89, 0.92]
    first = stats.bootstrap_median_ci(values, seed=7)
    assert first == stats.bootstrap_median_ci(values, seed=7)
    low, high = first
    assert min(values) <= low <= float(np.median(values)) <= high <= max(values)
    narrow = stats.bootstrap_median_ci(values, confidence=0.5, seed=7)
    assert low <= narrow[0] <= narrow[1] <= high
    assert stats.bootstrap_median_ci([1.5]) == (1.5, 1.5)


def test_bootstrap_interval_covers_the_true_median_about_as_often_as_promised() -> None:
    rng = np.random.default_rng(11)
    trials, n = 300, 15
    covered = 0
    for trial in range(trials):
        sample = rng.normal(0.0, 1.0, n)
        low, high = stats.bootstrap_median_ci(list(sample), 0.95, resamples=1000, seed=trial)
        covered += low <= 0.0 <= high
    assert 0.88 <= covered / trials <= 0.995


def test_bootstrap_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        stats.bootstrap_median_ci([])
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_median_ci([1.0, 2.0], confidence=1.0)


def test_the_old_summaries_still_hold() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0 and stats.median([]) is None
    assert stats.iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0
    assert stats.cv([1.0]) is None and stats.cv([1.0, 3.0]) == pytest.approx(math.sqrt(2) / 2)
