"""Numerical parity with the float64 reference: forward, gradients, evaluate and optimizer steps.

What is compared and why: docs/decisions.md#parity-checks; every bound: docs/decisions.md#conformance.
Each function returns ``Check`` records; a backend call that raises ends its list with a failure
naming the call and the likely cause.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnbench import elementwise
from cnnbench import reference as ref
from cnnbench.backend import Session
from cnnbench.conformance.calls import BackendCallFailed, call
from cnnbench.conformance.diagnose import logits_hint, scale_hint, scaled_error, shape_hint
from cnnbench.conformance.outcome import Array, Check, Weights, compare, structural, worst
from cnnbench.conformance.tolerances import (
    ACCURACY_TIE_LOGITS,
    GRAD_REL,
    KINK_REL,
    LOGITS_REL,
    LOSS_REL,
    ROUNDING,
    STATE_REL,
)
from cnnbench.spec import ModelSpec

GRADIENT_RULE = f"{GRAD_REL:g} x max|reference| + near-tie allowance"


def run_checks(spec: ModelSpec | None, body: Callable[[list[Check]], None]) -> list[Check]:
    """Collect the checks ``body`` appends; a raising backend call ends the list with a failure."""
    checks: list[Check] = []
    try:
        body(checks)
    except BackendCallFailed as failed:
        checks.append(structural(failed.call, False, failed.detail))
    return checks


def weights_of(session: Session, spec: ModelSpec | None = None) -> Weights:
    """``get_weights()`` as float32 arrays (a failure names the call)."""
    exported = call("get_weights", session.get_weights, spec=spec)
    return {name: np.asarray(value) for name, value in exported.items()}


def check_weight_shapes(session: Session, spec: ModelSpec) -> Check:
    """The backend's weight names and shapes are the spec's; a padding switch that explains them is named."""
    exported = weights_of(session, spec)
    expected = spec.param_shapes()
    shapes = {name: tuple(np.shape(value)) for name, value in exported.items()}
    if shapes == expected:
        return structural("weight shapes", True, f"{len(expected)} tensors as in the spec")
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = [
        f"{name} is {shapes[name]}, the spec says {expected[name]}"
        for name in expected
        if name in shapes and shapes[name] != expected[name]
    ]
    parts = (
        wrong
        + ([f"missing {', '.join(missing)}"] if missing else [])
        + ([f"unexpected {', '.join(extra)}"] if extra else [])
    )
    return structural("weight shapes", False, "; ".join(parts) + shape_hint(spec, shapes))


def check_round_trip(name: str, session: Session, weights: Weights, spec: ModelSpec | None = None) -> Check:
    """``get_weights`` returns exactly ``weights`` (the worst tensor is reported)."""
    exported = weights_of(session, spec)
    if set(exported) != set(weights):
        return structural(name, False, f"get_weights returned {sorted(exported)}, expected {sorted(weights)}")
    rule = "exact: to the native layout and back"
    checks = {key: compare(name, exported[key], weights[key], 0.0, rule) for key in weights}
    key = max(checks, key=lambda k: (not checks[k].passed, checks[k].max_abs or 0.0))
    check = checks[key]
    check.detail = (
        "all tensors identical" if check.passed else f"{key} differs" + (f" ({check.detail})" if check.detail else "")
    )
    return check


# --- forward and gradients ------------------------------------------------------------------------


def forward_checks(session: Session, spec: ModelSpec, weights: Weights, x: Array, y: Array) -> list[Check]:
    """Predict (twice), logits, loss and every gradient against the reference; ``weights`` already set."""
    return run_checks(spec, lambda checks: _forward(checks, session, spec, weights, x, y))


def logits_checks(session: Session, spec: ModelSpec, weights: Weights, x: Array) -> list[Check]:
    """Predict twice and the logits against the reference, with the convention or layout that explains a miss."""
    return run_checks(spec, lambda checks: _logits(checks, session, spec, weights, x))


def _logits(checks: list[Check], session: Session, spec: ModelSpec, weights: Weights, x: Array) -> None:
    first = np.asarray(call("predict", session.predict, x, spec=spec))
    second = np.asarray(call("predict", session.predict, x, spec=spec))
    repeat = compare("predict repeatable", second, first, 0.0, "exact: the same input twice in inference mode")
    if not repeat.passed and repeat.max_abs is not None:
        repeat.detail = "two predict calls on the same batch differ: dropout or other randomness is active in inference"
    checks.append(repeat)
    logits_ref = ref.forward(spec, weights, x)
    check = compare(
        "logits", first, logits_ref, LOGITS_REL * np.abs(logits_ref).max(), f"{LOGITS_REL:g} x max|reference|"
    )
    if not check.passed and first.shape == logits_ref.shape and np.isfinite(first).all():
        hint = logits_hint(spec, weights, x, first)
        check.detail = "forward pass differs" + (
            f": {hint}"
            if hint
            else (
                " (check the layout conversion in set_weights - kernels HWIO and (in, out) - the flatten order "
                "(H, W, C), SAME padding and activations)"
            )
        )
    checks.append(check)


def gradient_checks(session: Session, spec: ModelSpec, weights: Weights, x: Array, y: Array) -> list[Check]:
    """Loss and every gradient against the reference, dropout off, weights unchanged; ``weights`` already set."""
    return run_checks(spec, lambda checks: _gradients(checks, session, spec, weights, x, y))


def _forward(checks: list[Check], session: Session, spec: ModelSpec, weights: Weights, x: Array, y: Array) -> None:
    _logits(checks, session, spec, weights, x)
    _gradients(checks, session, spec, weights, x, y)


def _gradients(checks: list[Check], session: Session, spec: ModelSpec, weights: Weights, x: Array, y: Array) -> None:
    loss_ref, grads_ref, _, kinks, n_kinks = ref.gradients_and_kinks(spec, weights, x, y, KINK_REL)
    loss, grads = call("loss_and_gradients", session.loss_and_gradients, x, y, spec=spec)
    again, grads_again = call("loss_and_gradients", session.loss_and_gradients, x, y, spec=spec)
    loss_check = compare("loss", float(loss), loss_ref, LOSS_REL * abs(loss_ref), f"{LOSS_REL:g} x |reference|")
    repeat = scaled_error(np.float64(again), np.float64(loss)) > LOSS_REL or any(
        name in grads and scaled_error(grads_again.get(name, np.array(np.nan)), grads[name]) > GRAD_REL
        for name in grads_ref
    )
    if not loss_check.passed:
        if repeat:
            loss_check.detail = "two calls on the same batch differ: dropout must be inactive in loss_and_gradients"
        else:
            loss_check.detail = scale_hint(float(loss), loss_ref, len(y), "the loss") or (
                "not the mean softmax cross-entropy of the batch"
                + (" (dropout must be inactive here)" if spec.has_dropout else "")
            )
    checks.append(loss_check)
    for name, expected in grads_ref.items():
        if name not in grads:
            checks.append(structural(f"gradient {name}", False, "missing from loss_and_gradients"))
            continue
        check = compare(
            f"gradient {name}",
            grads[name],
            expected,
            GRAD_REL * elementwise.max_abs(expected) + kinks[name],
            GRADIENT_RULE,
        )
        if not check.passed:
            check.detail = scale_hint(grads[name], expected, len(y), "it") or (
                "not the gradient of this weight in the canonical layout (transposed or permuted?)"
            )
        elif n_kinks and kinks[name].any():
            check.detail = f"{n_kinks} near-tie ReLU/max-pool decisions allowed for"
        checks.append(check)
    checks.append(check_round_trip("weights unchanged", session, weights, spec))


# --- evaluate -----------------------------------------------------------------------------------


def evaluate_batch_sizes(n: int) -> tuple[int, ...]:
    """The whole test set in one batch, and a batch size that leaves a partial last batch."""
    partial = max(1, (3 * n) // 8)
    return (n, partial) if partial != n else (n,)


def evaluate_checks(session: Session, spec: ModelSpec, weights: Weights, x_test: Array, y_test: Array) -> list[Check]:
    """``evaluate`` against the reference on the loaded test set (``x_test``), whole and with a partial batch."""
    return run_checks(spec, lambda checks: _evaluate(checks, session, spec, weights, x_test, y_test))


def _partial_batch_hint(per_sample: Array, batch_size: int, loss: float) -> str:
    """Which partial-last-batch mistake gives ``loss``: dropped, or weighted as a full batch."""
    n = len(per_sample)
    means = [float(per_sample[i : i + batch_size].mean()) for i in range(0, n, batch_size)]
    full = n - n % batch_size
    left = n % batch_size
    dropped = float(per_sample[:full].mean()) if full else math.nan
    mistakes = {
        f"the partial last batch ({left} of {batch_size} images) is dropped": dropped,
        f"the batch means are averaged, so the partial last batch ({left} images) weighs as a full one": float(
            np.mean(means)
        ),
    }
    for meaning, value in mistakes.items():
        if math.isfinite(value) and abs(loss - value) <= LOSS_REL * abs(value):
            return meaning
    return ""


def _evaluate(
    checks: list[Check], session: Session, spec: ModelSpec, weights: Weights, x_test: Array, y_test: Array
) -> None:
    logits_ref = ref.forward(spec, weights, x_test)
    loss_ref, _ = ref.softmax_cross_entropy(logits_ref, y_test)
    shifted = logits_ref - logits_ref.max(axis=1, keepdims=True)
    per_sample = (
        np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y_test)), np.asarray(y_test, dtype=np.int64)]
    )
    n = len(y_test)
    top2 = np.sort(logits_ref, axis=1)[:, -2:]
    ambiguous = int((top2[:, 1] - top2[:, 0] <= ACCURACY_TIE_LOGITS * np.abs(logits_ref).max()).sum())
    accuracy_ref = float((logits_ref.argmax(axis=1) == y_test).mean())
    results: dict[int, tuple[float, float]] = {}
    for batch_size in evaluate_batch_sizes(n):
        outcome = call("evaluate", session.evaluate, batch_size, spec=spec)
        results[batch_size] = (float(outcome[0]), float(outcome[1]))
    again = call("evaluate", session.evaluate, evaluate_batch_sizes(n)[-1], spec=spec)
    repeatable = abs(float(again[0]) - results[evaluate_batch_sizes(n)[-1]][0]) <= LOSS_REL * abs(loss_ref)
    whole_ok = abs(results[n][0] - loss_ref) <= LOSS_REL * abs(loss_ref)
    for batch_size, (loss, accuracy) in results.items():
        label = f"batch size {batch_size} of {n}"
        check = compare(
            f"evaluate loss ({'whole' if batch_size == n else 'partial last batch'})",
            loss,
            loss_ref,
            LOSS_REL * abs(loss_ref),
            f"{LOSS_REL:g} x |reference| ({label})",
        )
        if not check.passed:
            if not repeatable:
                check.detail = "two evaluate calls differ: dropout is active in evaluate (switch to inference mode)"
            elif batch_size != n and whole_ok:
                check.detail = (
                    _partial_batch_hint(per_sample, batch_size, loss) or "wrong only with a partial last batch"
                )
            else:
                check.detail = (
                    "evaluate's loss differs from the reference while predict's logits are checked apart: "
                    "inference mode (dropout off) and the mean cross-entropy over every test image?"
                )
        checks.append(check)
        checks.append(
            compare(
                f"evaluate accuracy ({'whole' if batch_size == n else 'partial last batch'})",
                accuracy,
                accuracy_ref,
                ambiguous / n,
                "1/n per near-tie of the top two logits",
                f"{accuracy:.4f} vs {accuracy_ref:.4f}",
            )
        )
    checks.append(check_round_trip("weights unchanged by evaluate", session, weights, spec))


# --- optimizer steps ------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """One optimizer step as the backend took it, and the reference gradient at its starting weights."""

    before: Weights
    after: Weights
    grads: Weights
    kinks: Weights
    loss: float
    loss_ref: float
    #: The batch-norm moving statistics the reference gets from ``before`` on this step's batch (empty without).
    state: Weights = field(default_factory=dict)


@dataclass
class _Form:
    """One reference optimizer run beside the backend: its predictions, allowances and checks per tensor."""

    name: str
    optimizer: ref.SGD | ref.Adam
    delta_max: dict[str, Any] = field(default_factory=dict)
    capped: dict[str, Any] = field(default_factory=dict)
    allowances: list[Weights] = field(default_factory=list)
    per_tensor: dict[str, list[Check]] = field(default_factory=dict)

    def failed(self) -> int:
        """How many tensors fail at some step."""
        return sum(not all(check.passed for check in checks) for checks in self.per_tensor.values())

    def worst_ratio(self) -> float:
        """The largest difference / allowance over tensors and steps."""
        return max(
            (
                check.ratio if check.ratio is not None else math.inf
                for checks in self.per_tensor.values()
                for check in checks
            ),
            default=0.0,
        )


def step_allowance(
    optimizer: ref.SGD | ref.Adam,
    t: int,
    learning_rate: float,
    grads: Weights,
    kinks: Weights,
    before: Weights,
    after: Weights,
    delta_max: dict[str, Any],
    capped: dict[str, Any],
) -> Weights:
    """How far float32 weights may be from the reference's after step ``t`` (docs/decisions.md#conformance)."""
    # In-place arithmetic over few temporaries, split over the cores: a run's parity column pays for every pass
    # over 3.2 M weights.
    allowance: Weights = {}
    adam = optimizer if isinstance(optimizer, ref.Adam) else None
    for name, grad in grads.items():
        shape = np.shape(grad)
        g = elementwise.flat(grad)
        n = g.size
        extremes = elementwise.run(functools.partial(_part_extremes, g), n)
        g_max = float(np.max([high for high, _ in extremes]))
        g_min = float(np.min([low for _, low in extremes]))
        inputs = _AllowanceInputs(
            GRAD_REL * float(max(g_max, -g_min)),
            learning_rate,
            elementwise.flat(kinks[name]),
            elementwise.flat(before[name]),
            elementwise.flat(after[name]),
        )
        out = np.empty(n)
        if adam is not None:
            previous_max = delta_max.get(name)
            previous_cap = capped.get(name)
            delta = elementwise.flat(previous_max) if previous_max is not None else np.empty(n)
            cap = np.empty(n, dtype=bool)
            adam_inputs = _AdamInputs(
                ref.adam_update_bound(t, adam.beta1, adam.beta2),
                1 - adam.beta2**adam.t,  # v_hat = v / v_scale, as in corrected_moments
                adam.effective_epsilon(t),
                elementwise.flat(adam.v[name]),
                elementwise.flat(adam.m[name]),
                previous_max is not None,
                None if previous_cap is None else elementwise.flat(previous_cap),
            )
            elementwise.run(functools.partial(_adam_allowance_part, inputs, adam_inputs, delta, cap, out), n)
            delta_max[name] = delta.reshape(shape)
            capped[name] = cap.reshape(shape)
        else:
            elementwise.run(functools.partial(_sgd_allowance_part, inputs, out), n)
        allowance[name] = out.reshape(shape)
    return allowance


def _part_extremes(values: Array, piece: slice) -> tuple[float, float]:
    """(max, min) of one part, 0.0 included (an empty tensor's gradient tolerance is 0)."""
    chunk = values[piece]
    return float(chunk.max(initial=0.0)), float(chunk.min(initial=0.0))


@dataclass
class _AllowanceInputs:
    """What every optimizer's allowance of one tensor reads: flat arrays, and the scalars of this step."""

    gradient_tolerance: float  # GRAD_REL x max|g|, added to the near-tie allowance of each element
    learning_rate: float
    kinks: Array
    before: Array
    after: Array


@dataclass
class _AdamInputs:
    """Adam's part of one tensor's allowance: its step bound, bias correction, epsilon and moments (flat)."""

    bound: float
    v_scale: float
    epsilon: float
    v: Array
    m: Array
    has_previous_max: bool
    previous_cap: Array | None


def _rounding_plus(inputs: _AllowanceInputs, piece: slice, step: Array, out: Array) -> None:
    """out = ROUNDING x (|after - before| + |after|) + step, for one slice."""
    rounding = np.subtract(inputs.after[piece], inputs.before[piece])
    np.abs(rounding, out=rounding)
    rounding += np.abs(inputs.after[piece])
    rounding *= ROUNDING
    np.add(rounding, step, out=out[piece])


def _sgd_allowance_part(inputs: _AllowanceInputs, out: Array, piece: slice) -> None:
    delta = inputs.kinks[piece] + inputs.gradient_tolerance  # per element
    _rounding_plus(inputs, piece, inputs.learning_rate * delta, out)


def _adam_allowance_part(
    inputs: _AllowanceInputs, adam: _AdamInputs, delta_max: Array, cap: Array, out: Array, piece: slice
) -> None:
    delta = inputs.kinks[piece] + inputs.gradient_tolerance  # per element
    # m_hat and sqrt(v_hat) are weighted averages over the steps so far: the largest error bounds theirs.
    if adam.has_previous_max:
        delta = np.maximum(delta_max[piece], delta, out=delta_max[piece])
    else:
        delta_max[piece] = delta
    denominator = np.divide(adam.v[piece], adam.v_scale)
    np.sqrt(denominator, out=denominator)
    denominator += adam.epsilon
    sensitivity = np.multiply(delta, 1 + adam.bound)
    sensitivity /= denominator
    capped = np.greater_equal(sensitivity, 2 * adam.bound, out=cap[piece])
    capped &= np.abs(adam.m[piece]) > 0  # m_hat = m / m_scale: zero exactly where m is
    if adam.previous_cap is not None:
        capped |= adam.previous_cap[piece]
    step = np.minimum(sensitivity, 2 * adam.bound, out=sensitivity)
    step *= inputs.learning_rate
    _rounding_plus(inputs, piece, step, out)


def _forms(optimizer: str, learning_rate: float) -> list[_Form]:
    if optimizer == "adam":
        return [_Form(form, ref.make_optimizer("adam", learning_rate, form)) for form in ref.EPSILON_FORMS]
    return [_Form("plain", ref.make_optimizer(optimizer, learning_rate))]


def take_steps(session: Session, spec: ModelSpec, rows: Array, x_train: Array, y_train: Array) -> list[StepRecord]:
    """One ``train_batches`` call per row from the session's current weights, with the reference gradients."""
    records = []
    current = weights_of(session, spec)
    for row in rows:
        returned = call("train_batches", session.train_batches, np.asarray(row, dtype=np.int64)[None], spec=spec)
        step_loss = np.asarray(returned, dtype=np.float64).ravel()
        after = weights_of(session, spec)
        loss_ref, grads, _, kinks, _ = ref.gradients_and_kinks(spec, current, x_train[row], y_train[row], KINK_REL)
        state = ref.moving_statistics(spec, current, x_train[row]) if spec.has_batch_norm else {}
        loss = float(step_loss[0]) if step_loss.size == 1 else math.nan
        records.append(StepRecord(current, after, grads, kinks, loss, loss_ref, state))
        current = after
    return records


def _judge(
    records: list[StepRecord], optimizer: str, learning_rate: float, weights: Weights, first_passing: bool = False
) -> list[_Form]:
    """Every reference form of ``optimizer`` fed the same gradients, with its per-tensor checks.

    ``first_passing``: stop at the first form that passes everywhere (it is the only one returned then).
    """
    forms = _forms(optimizer, learning_rate)
    for index, form in enumerate(forms):
        form.per_tensor = {name: [] for name in weights}
        for t, record in enumerate(records, start=1):
            trainable = {name: value for name, value in record.before.items() if name in record.grads}
            predicted = {**form.optimizer.step(trainable, record.grads), **record.state}
            allowance = step_allowance(
                form.optimizer,
                t,
                learning_rate,
                record.grads,
                record.kinks,
                record.before,
                predicted,
                form.delta_max,
                form.capped,
            )
            for name, value in record.state.items():
                allowance[name] = STATE_REL * float(np.abs(value).max()) + ROUNDING * np.abs(value)
            form.allowances.append(allowance)
            for name in weights:
                check = compare(
                    f"{optimizer}: {name} after each step",
                    record.after.get(name, np.array(np.nan)),
                    predicted[name],
                    allowance[name],
                    "",
                )
                check.detail = f"step {t}"
                form.per_tensor[name].append(check)
        if first_passing and not form.failed():
            return forms[index : index + 1]
    return forms


def best_form(forms: list[_Form]) -> _Form:
    """The form the backend follows: one that passes everywhere (the first listed), else the closest."""
    return min(forms, key=lambda form: (form.failed(), form.worst_ratio()))


def _step_rule(optimizer: str) -> str:
    if optimizer == "adam":
        return "per element, one step: lr x propagated gradient tolerance (capped at 2 lr) + rounding"
    return f"per element, one step: lr x ({GRAD_REL:g} x max|g| + near-tie allowance) + rounding"


def step_checks(
    session: Session,
    spec: ModelSpec,
    optimizer: str,
    learning_rate: float,
    weights: Weights,
    x_train: Array,
    y_train: Array,
    rows: Array,
    *,
    loaded: bool = False,
    label: str = "",
    x_test: Array | None = None,
    y_test: Array | None = None,
    tell_forms_apart: bool = True,
) -> list[Check]:
    """K steps of ``train_batches`` from ``weights`` against the reference (``spec`` without dropout).

    ``session`` was built with ``optimizer`` and ``learning_rate``; ``loaded``: ``x_train`` is already
    loaded in it. ``label`` prefixes the check names (default: the optimizer's name).
    ``tell_forms_apart=False`` stops at the first of Adam's epsilon forms that passes (a run's column).
    """
    if spec.has_dropout:
        raise ValueError("step checks need a spec without dropout (see without_dropout)")

    def body(checks: list[Check]) -> None:
        call("set_weights", session.set_weights, weights, spec=spec)
        if not loaded:
            test_x = x_train[:1] if x_test is None else x_test
            test_y = y_train[:1] if y_test is None else y_test
            call("load_data", session.load_data, x_train, y_train, test_x, test_y, spec=spec)
        checks.extend(
            judge_steps(
                session, spec, optimizer, learning_rate, weights, x_train, y_train, rows, label, tell_forms_apart
            )
        )

    return run_checks(spec, body)


def judge_steps(
    session: Session,
    spec: ModelSpec,
    optimizer: str,
    learning_rate: float,
    weights: Weights,
    x_train: Array,
    y_train: Array,
    rows: Array,
    label: str = "",
    tell_forms_apart: bool = True,
) -> list[Check]:
    """The step checks proper, from ``weights`` already set: per step, then all rows in one call."""
    from cnnbench.conformance.optimizers import diagnose_update_rule

    prefix = label or optimizer
    records = take_steps(session, spec, rows, x_train, y_train)
    forms = _judge(records, optimizer, learning_rate, weights, first_passing=not tell_forms_apart)
    form = best_form(forms)
    checks: list[Check] = []
    failed = form.failed() > 0
    form_text = ref.EPSILON_FORMS.get(form.name, "plain SGD")
    if len(forms) == 1 and len(ref.EPSILON_FORMS) > 1 and optimizer == "adam":  # stopped at the first that passes
        said = f"within tolerance of {optimizer} with {form_text} (the forms not told apart: 'cnnbench check' does)"
    else:
        said = f"follows {optimizer} with {form_text}"
    rule = structural(f"{prefix}: update rule", not failed, said if not failed else "")
    if failed:
        rule.detail = diagnose_update_rule(optimizer, learning_rate, records, form.name) or (
            f"the updates are not {optimizer}'s with cnnbench's hyper-parameters"
        )
    checks.append(rule)
    losses = [record.loss for record in records]
    losses_ref = [record.loss_ref for record in records]
    checks.append(
        compare(
            f"{prefix}: loss of each step",
            losses,
            losses_ref,
            LOSS_REL * np.abs(losses_ref),
            f"{LOSS_REL:g} x |reference| at the backend's weights (lr {learning_rate:g})",
        )
    )
    for name, tensor_checks in form.per_tensor.items():
        check = worst(tensor_checks)
        check.name = f"{prefix}: {name} after each step"
        check.rule = _step_rule(optimizer)
        n_capped = int(np.sum(form.capped.get(name, False)))
        if n_capped:
            check.detail += (
                f"; Adam allowance capped at 2 lr for {n_capped} of {weights[name].size} elements "
                "(|g| within its tolerance of 0)"
            )
        checks.append(check)
    if len(records) > 1:
        checks.extend(_one_call(session, spec, prefix, weights, records, form.allowances, rows))
    return checks


def _one_call(
    session: Session,
    spec: ModelSpec,
    prefix: str,
    weights: Weights,
    records: list[StepRecord],
    allowances: list[Weights],
    rows: Array,
) -> list[Check]:
    """The same rows in one call (what the benchmark does), within the summed step allowances."""
    call("set_weights", session.set_weights, weights, spec=spec)
    one_call = np.asarray(
        call("train_batches", session.train_batches, np.asarray(rows, dtype=np.int64), spec=spec), dtype=np.float64
    ).ravel()
    final = weights_of(session, spec)
    cumulative = {name: np.zeros(np.shape(value)) for name, value in weights.items()}
    loss_tolerance = []
    for record, allowance in zip(records, allowances, strict=True):
        loss_tolerance.append(
            LOSS_REL * abs(record.loss_ref)
            + sum(float((np.abs(record.grads[name]) * cumulative[name]).sum()) for name in record.grads)
        )
        for name in cumulative:
            cumulative[name] += allowance[name]
    steps = len(records)
    losses = [record.loss for record in records]
    checks = [
        compare(
            f"{prefix}: {steps} batches in one call, losses",
            one_call,
            losses,
            loss_tolerance,
            "as one call per batch, within the steps' allowances",
            "train_batches with all rows at once",
        )
    ]
    last = records[-1].after
    weight_checks = [
        compare(
            f"{prefix}: {steps} batches in one call, weights",
            final.get(name, np.array(np.nan)),
            last[name],
            cumulative[name],
            "as one call per batch, within the summed step allowances",
        )
        for name in weights
    ]
    check = worst(weight_checks)
    check.detail = f"worst: {list(weights)[weight_checks.index(check)]}"
    checks.append(check)
    if not (checks[0].passed and check.passed) and steps > 1:
        order = "rows run in another order than given (sorted, shuffled or reversed?)"
        checks[0].detail = checks[0].detail + f"; {order}" if not checks[0].passed else checks[0].detail
        check.detail += f"; {order}" if not check.passed else ""
    return checks
