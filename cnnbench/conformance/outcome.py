"""What a check produces: one ``Check`` per comparison, and the summary every caller shows."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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
    got = np.asarray(actual, dtype=np.float64)
    want = np.asarray(expected, dtype=np.float64)
    if got.shape != want.shape:
        return Check(name, False, rule=rule, detail=f"shape {got.shape}, reference {want.shape}")
    if not np.isfinite(got).all():
        bad = int((~np.isfinite(got)).sum())
        return Check(
            name,
            False,
            max_abs=math.inf,
            max_rel=math.inf,
            rule=rule,
            detail=f"{bad} NaN or infinite values from the backend",
        )
    diff = np.subtract(got, want).ravel()
    np.abs(diff, out=diff)
    tol = np.asarray(tolerance, dtype=np.float64)
    if tol.ndim == 0:  # one bound for every element: no array of bounds (these run over 3.2 M weights)
        passed = bool(np.all(diff <= tol))
        if not diff.size:
            ratio = 0.0
        elif tol > 0:
            ratio = float(diff[np.argmax(diff)] / tol)  # division by a positive scalar keeps the order
        else:
            ratio = math.inf if bool((diff > 0).any()) else 0.0
        tolerance_at_worst = float(tol) if diff.size else 0.0
    else:
        bound = np.broadcast_to(tol, got.shape).ravel()
        passed = bool(np.all(diff <= bound))
        positive = bound > 0
        ratios = np.divide(diff, bound, out=np.zeros_like(diff), where=positive)
        if not positive.all():
            ratios[~positive & (diff > 0)] = np.inf
        worst = int(np.argmax(ratios)) if ratios.size else 0
        ratio = float(ratios[worst]) if ratios.size else 0.0
        tolerance_at_worst = float(bound[worst]) if bound.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return Check(name, passed, max_abs, max_rel, tolerance_at_worst, ratio, rule, detail)


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
