"""What a check produces: one ``Check`` per comparison, and the summary every caller shows."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnbench import elementwise

PASS, FAIL, UNAVAILABLE = "PASS", "FAIL", "UNAVAILABLE"

Array = npt.NDArray[Any]
Weights = dict[str, Array]


@dataclass
class Check:
    """One comparison. ``ratio`` is the worst difference / tolerance (<= 1 passes)."""

    name: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    tolerance: float | None = None
    ratio: float | None = None
    rule: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-safe: infinities and NaN (only in failed checks) become None."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in asdict(self).items()
        }

    def failure_text(self) -> str:
        """The one-line account of a failure: the numbers when there are some, then the detail."""
        if self.max_abs is not None and self.tolerance is not None and math.isfinite(self.max_abs):
            what = f"max abs diff {self.max_abs:.3g} > tolerance {self.tolerance:.3g}"
            return what + (f" ({self.detail})" if self.detail else "")
        return self.detail or "failed"


def compare(name: str, actual: Any, expected: Any, tolerance: Any, rule: str, detail: str = "") -> Check:
    """Element-wise |actual - expected| <= tolerance (a scalar or one bound per element)."""
    got = np.asarray(actual)
    want = np.asarray(expected, dtype=np.float64)
    if got.shape != want.shape:
        return Check(name, False, rule=rule, detail=f"shape {got.shape}, reference {want.shape}")
    tol = np.asarray(tolerance, dtype=np.float64)
    if tol.ndim:
        tol = np.broadcast_to(tol, got.shape)  # a tolerance of another shape raises, as NumPy says
    if not got.size:
        return Check(name, True, 0.0, 0.0, 0.0, 0.0, rule, detail)
    # Split over the cores (these run over 3.2 M weights); each part is compared as the whole would be.
    got_flat, want_flat = elementwise.flat(got), elementwise.flat(want)
    bound = elementwise.flat(tol) if tol.ndim else tol
    parts = elementwise.run(lambda piece: _compare_part(got_flat, want_flat, bound, piece), got_flat.size)
    bad = sum(part.bad for part in parts)
    if bad:
        return Check(
            name,
            False,
            max_abs=math.inf,
            max_rel=math.inf,
            rule=rule,
            detail=f"{bad} NaN or infinite values from the backend",
        )
    passed = all(part.passed for part in parts)
    max_abs = float(np.max([part.max_abs for part in parts]))
    scale = float(np.max([part.scale for part in parts]))
    if tol.ndim == 0:  # one bound for every element: no array of bounds (these run over 3.2 M weights)
        tolerance_at_worst = float(tol)
        above_zero = any(part.any_above_zero for part in parts)
        # Division by a positive scalar keeps the order: the largest difference has the largest ratio.
        ratio = max_abs / float(tol) if tol > 0 else (math.inf if above_zero else 0.0)
    else:
        winner = parts[elementwise.first_argmax([part.ratio for part in parts])]
        ratio, tolerance_at_worst = winner.ratio, winner.bound_at_worst
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return Check(name, passed, max_abs, max_rel, tolerance_at_worst, ratio, rule, detail)


@dataclass
class _ComparedPart:
    """One slice's share of ``compare``: combined exactly (sums, all, max, the first argmax)."""

    bad: int
    passed: bool = True
    max_abs: float = 0.0
    scale: float = 0.0
    ratio: float = 0.0
    bound_at_worst: float = 0.0
    any_above_zero: bool = False


def _compare_part(got: Array, want: Array, bound: Array, piece: slice) -> _ComparedPart:
    values = np.asarray(got[piece], dtype=np.float64)
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        return _ComparedPart(bad)
    diff = np.subtract(values, want[piece])
    np.abs(diff, out=diff)
    part = _ComparedPart(0, max_abs=float(diff.max()), scale=elementwise.part_max_abs(want[piece]))
    if bound.ndim == 0:
        part.passed = bool(np.all(diff <= bound))
        part.any_above_zero = bool((diff > 0).any())
        return part
    limits = bound[piece]
    part.passed = bool(np.all(diff <= limits))
    positive = limits > 0
    ratios = np.divide(diff, limits, out=np.zeros_like(diff), where=positive)
    if not positive.all():
        ratios[~positive & (diff > 0)] = np.inf
    worst = int(np.argmax(ratios))
    part.ratio, part.bound_at_worst = float(ratios[worst]), float(limits[worst])
    return part


def structural(name: str, passed: bool, detail: str = "") -> Check:
    """A fact that holds or not (names, shapes, a call that raised): no numbers."""
    return Check(name, passed, rule="must hold exactly", detail=detail)


def worst(checks: list[Check]) -> Check:
    """The failing check with the largest ratio, else the passing one closest to its tolerance."""
    return max(checks, key=lambda check: (not check.passed, check.ratio if check.ratio is not None else math.inf))


def failures(checks: list[Check]) -> list[Check]:
    """The checks that failed, in order."""
    return [check for check in checks if not check.passed]


def message(checks: list[Check], skipped: list[str] | None = None) -> str:
    """One line: the first failure in full and the names of the others, or that all passed."""
    failed = failures(checks)
    if failed:
        first = failed[0]
        text = f"{first.name}: {first.failure_text()}"
        if len(failed) > 1:
            others = [check.name for check in failed[1:]]
            text += f"; also {', '.join(others[:4])}" + (f" (+{len(others) - 4} more)" if len(others) > 4 else "")
    else:
        text = f"all {len(checks)} checks within tolerance"
    if skipped:
        text += "; not checked: " + "; ".join(skipped)
    return text


def summarize(checks: list[Check], skipped: list[str] | None = None) -> dict[str, Any]:
    """The JSON-able result: status, checks by name, and a one-line message."""
    result: dict[str, Any] = {
        "status": FAIL if failures(checks) else PASS,
        "checks": {check.name: check.to_dict() for check in checks},
        "message": message(checks, skipped),
    }
    if skipped:
        result["skipped"] = list(skipped)
    return result
