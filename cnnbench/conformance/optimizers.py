"""Naming an optimizer bug from the updates a backend made: epsilon, bias correction, betas, momentum, decay.

Every estimate here is fitted to the backend's own updates (the weights before and after each
step) and the reference gradients at the weights it started from, so it reads what the backend
did rather than guessing from one number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON
from cnnbench.conformance.numerics import StepRecord
from cnnbench.conformance.outcome import Array

#: Keras' default Adam epsilon: the usual wrong value.
KERAS_EPSILON = 1e-7
#: Enough elements for a median to mean something.
MIN_ELEMENTS = 20


def _flat(weights: dict[str, Array]) -> Array:
    return np.concatenate([np.asarray(value, dtype=np.float64).ravel() for value in weights.values()])


def _update(record: StepRecord) -> tuple[Array, Array, Array]:
    """(gradient, update, weight before) of every element, flattened in the same order."""
    names = list(record.grads)
    grads = _flat({name: record.grads[name] for name in names})
    before = _flat({name: record.before[name] for name in names})
    after = _flat({name: record.after[name] for name in names})
    return grads, after - before, before


def _near(value: float, target: float, relative: float) -> bool:
    return target != 0 and abs(value / target - 1) <= relative


def first_step_ratio(record: StepRecord) -> float | None:
    """Median size of the first step along -sign(g) where epsilon cannot matter (|g| > 1e-4); Adam's is lr."""
    grads, update, _ = _update(record)
    large = np.abs(grads) > 1e-4
    if large.sum() < MIN_ELEMENTS:
        return None
    return float(np.median(-update[large] * np.sign(grads[large])))


def effective_epsilon(record: StepRecord, learning_rate: float) -> float | None:
    """The epsilon the first Adam step implies where it matters: |u| = lr |g| / (|g| + epsilon)."""
    grads, update, _ = _update(record)
    moved = -update * np.sign(grads) / learning_rate
    band = (moved > 0.05) & (moved < 0.95) & (grads != 0)
    if band.sum() < MIN_ELEMENTS:
        return None
    return float(np.median(np.abs(grads[band]) * (1 / moved[band] - 1)))


def _adam_epsilon_hint(epsilon: float) -> str:
    hat = math.sqrt(1 - ADAM_BETA2)
    allowed = (ADAM_EPSILON, ADAM_EPSILON / hat)
    if any(_near(epsilon, value, 0.25) for value in allowed):
        return ""
    if _near(epsilon, KERAS_EPSILON, 0.25):
        return (
            f"Adam epsilon is {KERAS_EPSILON:g} (Keras' default), added to sqrt(v_hat); cnnbench's ADAM_EPSILON is "
            f"{ADAM_EPSILON:g} (the first update implies {epsilon:.2g})"
        )
    if _near(epsilon, KERAS_EPSILON / hat, 0.25):
        return (
            f"Adam epsilon is {KERAS_EPSILON:g} (Keras' default) in Keras' form (added to sqrt(v) before bias "
            f"correction); cnnbench's ADAM_EPSILON is {ADAM_EPSILON:g} (the first update implies {epsilon:.2g})"
        )
    return (
        f"the first Adam update implies an effective epsilon of {epsilon:.2g} (epsilon {epsilon:.2g} added to "
        "sqrt(v_hat), "
        f"or {epsilon * hat:.2g} added to sqrt(v) before bias correction); cnnbench's ADAM_EPSILON {ADAM_EPSILON:g} "
        f"gives {allowed[0]:.2g} or {allowed[1]:.2g}"
    )


def _bias_correction_hint(ratio: float, learning_rate: float) -> str:
    if _near(ratio, 1.0, 0.01):
        return ""
    both = (1 - ADAM_BETA1) / math.sqrt(1 - ADAM_BETA2)
    named = {
        both: "no bias correction of m and v",
        1 / math.sqrt(1 - ADAM_BETA2): "v is not bias-corrected (m is)",
        1 - ADAM_BETA1: "m is not bias-corrected (v is)",
    }
    for value, meaning in named.items():
        if _near(ratio, value, 0.1):
            return (
                f"{meaning}: the first Adam update moves weights by {ratio:.3g} x lr where bias-corrected Adam "
                f"(Kingma & Ba) moves them by lr"
            )
    return (
        f"the first Adam update moves weights by {ratio:.3g} x lr where bias-corrected Adam moves them by lr "
        f"(learning rate {ratio * learning_rate:.3g} instead of {learning_rate:g}?)"
    )


def adam_ratio(grads: Sequence[Array], beta1: float | Array, beta2: float | Array) -> Array:
    """m_hat / sqrt(v_hat) after the gradients ``grads`` (epsilon negligible), broadcast over beta grids."""
    t = len(grads)
    m = sum((1 - beta1) * beta1 ** (t - j) * g for j, g in enumerate(grads, start=1))
    v = sum((1 - beta2) * beta2 ** (t - j) * g * g for j, g in enumerate(grads, start=1))
    return np.asarray((m / (1 - beta1**t)) / np.sqrt(v / (1 - beta2**t)))


def _betas_hint(records: list[StepRecord], learning_rate: float) -> str:
    """Fit beta1 and beta2 to the updates of steps 2..T on elements whose gradients are large at every step."""
    flat = [_update(record) for record in records]
    large = np.all([np.abs(g) > 1e-4 for g, _, _ in flat], axis=0)
    if large.sum() < MIN_ELEMENTS or len(records) < 2:
        return ""
    chosen = np.flatnonzero(large)[:: max(1, int(large.sum()) // 2000)]
    grads = [g[chosen] for g, _, _ in flat]
    observed = [-u[chosen] / learning_rate for _, u, _ in flat]
    beta1 = np.concatenate([[0.0], 1 - np.logspace(-3, -0.05, 48)])[:, None, None]
    beta2 = (1 - np.logspace(-5, -0.5, 46))[None, :, None]
    errors = np.zeros((beta1.shape[0], beta2.shape[1]))
    for t in range(2, len(records) + 1):
        errors += np.median(np.abs(adam_ratio(grads[:t], beta1, beta2) - observed[t - 1]), axis=2)
    i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
    at_config = sum(
        float(np.median(np.abs(adam_ratio(grads[:t], ADAM_BETA1, ADAM_BETA2) - observed[t - 1])))
        for t in range(2, len(records) + 1)
    )
    best = float(errors[i, j])
    fit1, fit2 = float(beta1[i, 0, 0]), float(beta2[0, j, 0])
    if best < 0.5 * at_config and not (_near(1 - fit1, 1 - ADAM_BETA1, 0.3) and _near(1 - fit2, 1 - ADAM_BETA2, 0.3)):
        return (
            f"the Adam updates fit beta1 {fit1:.3g} and beta2 {fit2:.4g}; cnnbench's are {ADAM_BETA1} and {ADAM_BETA2} "
            "(cnnbench.config)"
        )
    return ""


def _sgd_hint(records: list[StepRecord], learning_rate: float) -> str:
    grads, update, before = _update(records[0])
    large = np.abs(grads) > 1e-3 * float(np.abs(grads).max())
    if large.sum() < MIN_ELEMENTS:
        return ""
    moved = -update / learning_rate
    ratio = float(np.median(moved[large] / grads[large]))
    if not _near(ratio, 1.0, 0.01):
        heavy = large & (np.abs(before) > 1e-3)
        if heavy.sum() >= MIN_ELEMENTS:
            decay = float(np.median((moved[heavy] - grads[heavy]) / before[heavy]))
            residual = np.abs(moved[heavy] - grads[heavy] - decay * before[heavy])
            if decay > 1e-6 and float(np.median(residual)) < 0.01 * float(np.median(np.abs(grads[heavy]))):
                return f"SGD applies weight decay {decay:.2g}: cnnbench's SGD is plain (w <- w - lr g)"
        return (
            f"the first SGD update is {ratio:.4g} x lr x gradient: learning rate {ratio * learning_rate:.3g} "
            f"instead of {learning_rate:g}?"
        )
    if len(records) < 2:
        return ""
    g2, u2, _ = _update(records[1])
    moved2 = -u2 / learning_rate
    momentum = float(np.median((moved2[large] - g2[large]) / grads[large]))
    if abs(momentum) > 0.02:
        return (
            f"SGD with momentum {momentum:.2g}: the second update carries {momentum:.2g} x the first gradient; "
            "cnnbench's SGD is plain"
        )
    return ""


def diagnose_update_rule(optimizer: str, learning_rate: float, records: list[StepRecord], form: str) -> str:
    """The named optimizer mistake that explains the backend's updates, or ""."""
    if not records:
        return ""
    if optimizer == "sgd":
        return _sgd_hint(records, learning_rate)
    ratio = first_step_ratio(records[0])
    if ratio is not None:
        hint = _bias_correction_hint(ratio / learning_rate, learning_rate)
        if hint:
            return hint
    epsilon = effective_epsilon(records[0], learning_rate)
    if epsilon is not None:
        hint = _adam_epsilon_hint(epsilon)
        if hint:
            return hint
    return _betas_hint(records, learning_rate)
