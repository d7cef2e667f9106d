"""The checks in order, on a backend's sessions: what ``cnnbench check`` and the run's parity column report.

``check_backend`` builds its own sessions; ``check_session`` starts from the session a run already
built. Both return the same JSON-able summary (status, checks by name, one-line message).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from cnnbench import reference as ref
from cnnbench.backend import Backend, Session
from cnnbench.config import TrainConfig
from cnnbench.conformance.calls import call
from cnnbench.conformance.data import DEFAULT_BATCH, DEFAULT_STEPS, CheckData, make_check_data, without_dropout
from cnnbench.conformance.numerics import (
    check_round_trip,
    check_weight_shapes,
    evaluate_checks,
    forward_checks,
    run_checks,
    step_checks,
    weights_of,
)
from cnnbench.conformance.outcome import Array, Check, Weights, compare, summarize
from cnnbench.conformance.probes import (
    DROPOUT_PROBE_LEARNING_RATE,
    DROPOUT_ROWS,
    adam_probe_checks,
    dropout_checks,
    dropout_losses,
    dropout_probe_layers,
    reset_checks,
)
from cnnbench.conformance.tolerances import LOGITS_REL
from cnnbench.spec import ModelSpec

#: Learning rates of the step checks when a command checks both optimizers.
DEFAULT_LEARNING_RATES = {"adam": 1e-3, "sgd": 0.01}


@contextmanager
def new_session(backend: Backend, spec: ModelSpec, config: TrainConfig, variant: str | None) -> Iterator[Session]:
    """A fresh session of ``backend``, closed afterwards (closing is best effort: the checks already ran)."""
    session = call("create_session", backend.create_session, spec, config, variant, spec=spec)
    try:
        yield session
    finally:
        with contextlib.suppress(Exception):  # a failing close must not hide the checks' outcome
            session.close()


def probe_rows(data: CheckData, seed: int, rows: int = 3) -> Array:
    """``rows`` batch rows of the check data's training set (the reset and Adam probes need three)."""
    n_train, width = len(data.y_train), data.step_indices.shape[1]
    rng = np.random.default_rng(seed + 1)
    return np.stack([rng.permutation(n_train)[:width] for _ in range(rows)]).astype(np.int64)


def probe_checks(
    backend: Backend,
    spec: ModelSpec,
    config: TrainConfig,
    variant: str | None,
    adam_lr: float,
    weights: Weights,
    data: CheckData,
    seed: int,
    skipped: list[str],
) -> list[Check]:
    """The checks that need sessions of their own: optimizer reset, Adam's hyper-parameters, dropout."""
    plain = without_dropout(spec)
    rows = probe_rows(data, seed)

    def body(checks: list[Check]) -> None:
        adam_config = replace(config, optimizer="adam", learning_rate=adam_lr, dropout=0.0)
        with new_session(backend, plain, adam_config, variant) as session:
            call("load_data", session.load_data, data.x_train, data.y_train, data.x_batch, data.y_batch, spec=plain)
            reset = reset_checks(session, plain, adam_lr, weights, data.x_train, data.y_train, rows)
            checks.extend(reset)
            if all(check.passed for check in reset):
                probe, reason = adam_probe_checks(session, plain, adam_lr, weights, data.x_train, data.y_train, rows)
                checks.extend(probe)
                if reason:
                    skipped.append(reason)
            else:
                skipped.append("adam hyper-parameters (set_weights does not reset the optimizer)")
        if dropout_probe_layers(spec) is None:
            skipped.append("dropout rate and scaling (the spec has no dropout before its output layer)")
            return
        dropout_config = replace(config, optimizer="adam", learning_rate=DROPOUT_PROBE_LEARNING_RATE)
        with new_session(backend, spec, dropout_config, variant) as session:
            checks.extend(
                run_checks(
                    spec, lambda found: found.extend(dropout_checks(dropout_losses(session, spec, DROPOUT_ROWS), spec))
                )
            )

    return run_checks(spec, body)


def session_checks(session: Session, spec: ModelSpec, weights: Weights, data: CheckData) -> list[Check]:
    """Shapes, round trip, forward, gradients and evaluate on ``session``; leaves the check data loaded."""

    def body(checks: list[Check]) -> None:
        shapes = check_weight_shapes(session, spec)
        checks.append(shapes)
        if not shapes.passed:
            return
        call("set_weights", session.set_weights, weights, spec=spec)
        checks.append(check_round_trip("weights round trip", session, weights, spec))
        checks.extend(forward_checks(session, spec, weights, data.x_batch, data.y_batch))
        call("load_data", session.load_data, data.x_train, data.y_train, data.x_batch, data.y_batch, spec=spec)
        checks.extend(evaluate_checks(session, spec, weights, data.x_batch, data.y_batch))

    return run_checks(spec, body)


def _steps_in_new_session(
    backend: Backend,
    spec: ModelSpec,
    config: TrainConfig,
    variant: str | None,
    weights: Weights,
    data: CheckData,
    tell_forms_apart: bool = True,
) -> list[Check]:
    def body(checks: list[Check]) -> None:
        with new_session(backend, spec, config, variant) as session:
            checks.extend(
                step_checks(
                    session,
                    spec,
                    config.optimizer,
                    config.learning_rate,
                    weights,
                    data.x_train,
                    data.y_train,
                    data.step_indices,
                    x_test=data.x_batch,
                    y_test=data.y_batch,
                    tell_forms_apart=tell_forms_apart,
                )
            )

    return run_checks(spec, body)


def _start_weights(spec: ModelSpec, init: str, seed: int) -> Weights:
    from cnnbench.initializers import initial_weights

    weights = initial_weights(spec, init if init != "framework" else "glorot-uniform", seed)
    assert weights is not None
    return weights


def check_session(
    session: Session,
    spec: ModelSpec,
    optimizer: str,
    learning_rate: float,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    *,
    backend: Backend | None = None,
    config: TrainConfig | None = None,
    variant: str | None = None,
    init: str = "glorot-uniform",
    batch: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Parity of an existing session (built from ``spec`` with ``optimizer`` / ``learning_rate``).

    With ``backend``, the step checks of a spec with dropout and the probes run in sessions of their
    own (``config`` and ``variant`` as for the real one); without, they are listed in ``skipped``.
    Leaves ``session`` with other weights, data and optimizer state: set them again before using it.
    """
    weights = _start_weights(spec, init, seed)
    data = make_check_data(spec, seed, batch, steps)
    skipped: list[str] = []
    train = replace(config or TrainConfig(), optimizer=optimizer, learning_rate=learning_rate)

    def body(checks: list[Check]) -> None:
        checks.extend(session_checks(session, spec, weights, data))
        if not all(check.passed for check in checks if check.name == "weight shapes"):
            return
        if not spec.has_dropout:
            checks.extend(
                step_checks(
                    session,
                    spec,
                    optimizer,
                    learning_rate,
                    weights,
                    data.x_train,
                    data.y_train,
                    data.step_indices,
                    loaded=True,
                )
            )
        elif backend is not None:
            checks.extend(
                _steps_in_new_session(
                    backend, without_dropout(spec), replace(train, dropout=0.0), variant, weights, data
                )
            )
        else:
            skipped.append(
                f"{optimizer} steps (the spec has dropout; pass backend= to check them in a dropout-free session)"
            )
        if backend is None:
            skipped.append(
                "optimizer reset, adam hyper-parameters and dropout (pass backend= to probe them in sessions of "
                "their own)"
            )
            return
        adam_lr = learning_rate if optimizer == "adam" else DEFAULT_LEARNING_RATES["adam"]
        checks.extend(probe_checks(backend, spec, train, variant, adam_lr, weights, data, seed, skipped))

    return summarize(run_checks(spec, body), skipped)


def _export_check(session: Session, spec: ModelSpec, data: CheckData) -> Check:
    """A fresh session's own (framework-initialised) weights, exported, give its logits in the reference."""
    native = weights_of(session, spec)
    exported_logits = np.asarray(call("predict", session.predict, data.x_batch, spec=spec))
    expected = ref.forward(spec, native, data.x_batch)
    return compare(
        "export: native -> canonical",
        exported_logits,
        expected,
        LOGITS_REL * np.abs(expected).max(),
        f"{LOGITS_REL:g} x max|reference| (logits of the session's own initial weights)",
    )


#: What a check without probes says it left out.
PROBES_LEFT_OUT = "optimizer reset, Adam hyper-parameters and dropout probes (they run in 'cnnbench check')"


def check_backend(
    backend: Backend,
    spec: ModelSpec,
    config: TrainConfig | None = None,
    variant: str | None = None,
    learning_rates: dict[str, float] | None = None,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    init: str = "glorot-uniform",
    batch: int = DEFAULT_BATCH,
    probes: bool = True,
    tell_forms_apart: bool = True,
) -> dict[str, Any]:
    """Everything ``cnnbench check`` compares, in fresh sessions of ``backend`` (import it first).

    ``learning_rates`` maps each optimizer whose steps are checked to its learning rate (default:
    Adam and SGD). Adds to ``check_session``'s checks the export check of a fresh session's weights.
    ``probes=False`` leaves out the probes that need sessions of their own (a run's parity column), and
    ``tell_forms_apart=False`` stops at the first of Adam's epsilon forms that passes (the same column).
    """
    config = config or TrainConfig()
    learning_rates = dict(learning_rates or DEFAULT_LEARNING_RATES)
    weights = _start_weights(spec, init, seed)
    data = make_check_data(spec, seed, batch, steps)
    first = next(iter(learning_rates))
    info: dict[str, Any] = {}
    skipped: list[str] = []

    def body(checks: list[Check]) -> None:
        session_config = replace(config, optimizer=first, learning_rate=learning_rates[first])
        with new_session(backend, spec, session_config, variant) as session:
            info.update(device=getattr(session, "device", ""), settings=_safe_settings(session))
            shapes = check_weight_shapes(session, spec)
            if not shapes.passed:
                checks.append(shapes)
                return
            checks.append(_export_check(session, spec, data))
            checks.extend(session_checks(session, spec, weights, data))
            for optimizer, learning_rate in learning_rates.items():
                if optimizer == first and not spec.has_dropout:
                    checks.extend(
                        step_checks(
                            session,
                            spec,
                            optimizer,
                            learning_rate,
                            weights,
                            data.x_train,
                            data.y_train,
                            data.step_indices,
                            loaded=True,
                            tell_forms_apart=tell_forms_apart,
                        )
                    )
                else:
                    step_config = replace(config, optimizer=optimizer, learning_rate=learning_rate, dropout=0.0)
                    checks.extend(
                        _steps_in_new_session(
                            backend, without_dropout(spec), step_config, variant, weights, data, tell_forms_apart
                        )
                    )
        if not probes:
            skipped.append(PROBES_LEFT_OUT)
            return
        adam_lr = learning_rates.get("adam", DEFAULT_LEARNING_RATES["adam"])
        checks.extend(probe_checks(backend, spec, session_config, variant, adam_lr, weights, data, seed, skipped))

    return {**summarize(run_checks(spec, body), skipped), **info}


def _safe_settings(session: Session) -> dict[str, Any]:
    try:
        return dict(session.settings())
    except Exception as exc:  # noqa: BLE001 - a broken settings() is shown, not raised
        return {"error": f"{type(exc).__name__}: {exc}"}
