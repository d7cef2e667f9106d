"""Big-array work split over threads gives bitwise what one whole-array call gives: compare, Adam, allowances."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cnnbench import elementwise
from cnnbench import reference as ref
from cnnbench.conformance import numerics
from cnnbench.conformance.outcome import Check, compare


@pytest.fixture  # the same for every Hypothesis example: nothing in it changes between them
def many_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of 3 elements on up to 4 threads: every array of a test is split, whatever the machine's cores."""
    monkeypatch.setattr(elementwise, "MIN_PART", 3)
    monkeypatch.setattr(elementwise, "available_cores", lambda: 4)


def whole_array_compare(name: str, actual: Any, expected: Any, tolerance: Any, rule: str) -> Check:
    """The definition, in one pass over whole arrays: what the split version must reproduce."""
    got = np.asarray(actual, dtype=np.float64)
    want = np.asarray(expected, dtype=np.float64)
    if got.shape != want.shape:
        return Check(name, False, rule=rule, detail=f"shape {got.shape}, reference {want.shape}")
    if not np.isfinite(got).all():
        bad = int((~np.isfinite(got)).sum())
        detail = f"{bad} NaN or infinite values from the backend"
        return Check(name, False, math.inf, math.inf, rule=rule, detail=detail)
    diff = np.abs(got - want).ravel()
    tol = np.asarray(tolerance, dtype=np.float64)
    bound = np.broadcast_to(tol, got.shape).ravel()
    passed = bool(np.all(diff <= bound))
    ratios = np.divide(diff, bound, out=np.zeros_like(diff), where=bound > 0)
    ratios[(bound <= 0) & (diff > 0)] = np.inf
    worst = int(np.argmax(ratios)) if ratios.size else 0
    ratio = float(ratios[worst]) if ratios.size else 0.0
    at_worst = float(bound[worst]) if bound.size else 0.0
    if tol.ndim == 0 and tol > 0 and diff.size:
        ratio = float(diff.max() / tol)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return Check(name, passed, max_abs, max_rel, at_worst, ratio, rule)


def same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN."""
    return bool(a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)))


floats = st.floats(-1e3, 1e3, allow_nan=False, width=64) | st.sampled_from([0.0, -0.0, 1e-300, np.nan, np.inf])
arrays = hnp.arrays(np.float64, st.integers(0, 40), elements=floats)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_compare_split_over_threads_is_the_whole_array_definition(many_parts: None, data: st.DataObject) -> None:
    expected = data.draw(arrays)
    actual = data.draw(hnp.arrays(np.float32, expected.shape, elements=st.floats(-1e3, 1e3, width=32)))
    if data.draw(st.booleans()):
        actual = expected + data.draw(st.floats(-1e-3, 1e-3))  # close, as a passing backend is
    scalar = data.draw(st.booleans())
    tolerance = (
        data.draw(st.sampled_from([0.0, -1.0, 1e-4, 1.0]))
        if scalar
        else data.draw(hnp.arrays(np.float64, expected.shape, elements=st.sampled_from([0.0, -1.0, 1e-4, 1.0])))
    )
    split = compare("x", actual, expected, tolerance, "rule")
    whole = whole_array_compare("x", actual, expected, tolerance, "rule")
    for field in ("passed", "max_abs", "max_rel", "tolerance", "ratio", "detail"):
        assert same(getattr(split, field), getattr(whole, field)), field


def test_a_backend_nan_is_counted_over_every_part(many_parts: None) -> None:
    actual = np.zeros(20)
    actual[[1, 9, 19]] = [np.nan, np.inf, -np.inf]
    check = compare("x", actual, np.zeros(20), 1.0, "rule")
    assert not check.passed and check.detail == "3 NaN or infinite values from the backend"


def test_the_worst_element_is_the_first_of_equal_ratios_across_parts(many_parts: None) -> None:
    actual, bound = np.zeros(12), np.ones(12)
    actual[[4, 10]], bound[[4, 10]] = [2.0, 4.0], [1.0, 2.0]  # ratio 2 in the second part and in the fourth
    check = compare("x", actual, np.zeros(12), bound, "rule")
    assert check.ratio == 2.0 and check.tolerance == 1.0 and not check.passed  # the second part's element


def test_parts_cover_the_range_once_and_respect_the_thread_limit(many_parts: None) -> None:
    for n in (0, 1, 5, 12, 13, 1000):
        pieces = elementwise.parts(n)
        covered = [i for piece in pieces for i in range(n)[piece]]
        assert covered == list(range(n)) and 1 <= len(pieces) <= 4
    elementwise.set_threads(2)
    try:
        assert len(elementwise.parts(1000)) == 2
    finally:
        elementwise.set_threads(None)
    with pytest.raises(ValueError, match="at least 1"):
        elementwise.set_threads(0)


def test_work_runs_on_several_threads_when_split(many_parts: None) -> None:
    seen: set[int] = set()
    barrier = threading.Barrier(2, timeout=10)

    def part(piece: slice) -> int:
        seen.add(threading.get_ident())
        if piece.start in (0, 6):
            barrier.wait()  # two parts must be in flight at once
        return piece.stop - piece.start

    elementwise.set_threads(2)
    try:
        assert sum(elementwise.run(part, 12)) == 12
    finally:
        elementwise.set_threads(None)
    assert len(seen) == 2


def whole_array_adam_step(adam: ref.Adam, weights: dict, grads: dict) -> dict:
    """Adam's step as the textbook writes it, whole arrays: m, v, bias correction, epsilon."""
    adam.t += 1
    out = {}
    for name, w in weights.items():
        g = grads[name]
        m = (1 - adam.beta1) * g + adam.beta1 * adam.m.get(name, 0.0)
        v = (1 - adam.beta2) * g * g + adam.beta2 * adam.v.get(name, 0.0)
        adam.m[name], adam.v[name] = m, v
        denominator = np.sqrt(v / (1 - adam.beta2**adam.t)) + adam.effective_epsilon()
        out[name] = np.asarray(w, np.float64) - adam.learning_rate * (m / (1 - adam.beta1**adam.t)) / denominator
    return out


@pytest.mark.parametrize("form", sorted(ref.EPSILON_FORMS))
def test_adam_split_over_threads_is_bitwise_the_textbook_step(many_parts: None, form: str) -> None:
    rng = np.random.default_rng(1)
    weights = {"a/kernel": rng.standard_normal((5, 7)).astype(np.float32), "b/bias": rng.standard_normal(4)}
    split, whole = ref.Adam(1e-3, epsilon_form=form), ref.Adam(1e-3, epsilon_form=form)
    for _ in range(3):
        grads = {name: rng.standard_normal(np.shape(w)) for name, w in weights.items()}
        got, want = split.step(weights, grads), whole_array_adam_step(whole, weights, grads)
        for name in weights:
            np.testing.assert_array_equal(got[name], want[name])  # the same operations in the same order
            np.testing.assert_array_equal(split.v[name], whole.v[name])
        weights = {name: value.astype(np.float32) for name, value in got.items()}


def test_the_step_allowance_split_over_threads_is_bitwise_the_single_thread_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shapes = {"c/kernel": (4, 4, 1, 3), "d/kernel": (30, 7), "d/bias": (7,)}

    def allowances(parts_of: int, cores: int) -> tuple[list[dict], dict, dict]:
        monkeypatch.setattr(elementwise, "MIN_PART", parts_of)
        monkeypatch.setattr(elementwise, "available_cores", lambda: cores)
        step_rng = np.random.default_rng(3)
        adam = ref.Adam(1e-3)
        before = {name: step_rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        delta_max: dict = {}
        capped: dict = {}
        out = []
        for t in (1, 2, 3):
            grads = {name: step_rng.standard_normal(shape) for name, shape in shapes.items()}
            grads["d/bias"][:3] = 0.0  # zero gradients: capped allowances
            kinks = {name: np.abs(step_rng.standard_normal(shape)) * 1e-6 for name, shape in shapes.items()}
            after = adam.step(before, grads)
            out.append(numerics.step_allowance(adam, t, 1e-3, grads, kinks, before, after, delta_max, capped))
            before = {name: value.astype(np.float32) for name, value in after.items()}
        return out, delta_max, capped

    split = allowances(3, 4)
    single = allowances(1 << 30, 1)
    for got, want in zip(split[0], single[0], strict=True):
        for name in shapes:
            assert np.array_equal(got[name], want[name])
    for name in shapes:
        assert np.array_equal(split[1][name], single[1][name]) and np.array_equal(split[2][name], single[2][name])
