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
