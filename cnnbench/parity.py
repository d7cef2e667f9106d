"""Cross-framework parity: does a backend compute the same function as the float64 reference?

What is compared and why: docs/decisions.md#parity-checks; the tolerances: docs/decisions.md#parity-tolerances.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from cnnbench import reference as ref
from cnnbench.config import TrainConfig
from cnnbench.spec import Conv2D, Dropout, MaxPool2D, ModelSpec

LOGITS_REL = 1e-5
LOSS_REL = 1e-5
GRAD_REL = 1e-4
#: A ReLU input or a max-pool window's top-two gap within this x the layer's largest value is a near-tie.
KINK_REL = 1e-5
#: Rounding allowed per step on a float32 weight and on its update: 4 units in the last place.
ROUNDING = 4 * 2.0**-24
DEFAULT_BATCH = 16
DEFAULT_STEPS = 3
#: Learning rates of the step checks when a command checks both optimizers.
DEFAULT_LEARNING_RATES = {"adam": 1e-3, "sgd": 0.01}
PASS, FAIL, UNAVAILABLE = "PASS", "FAIL", "UNAVAILABLE"

Weights = dict[str, np.ndarray]


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
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in asdict(self).items()}


def compare(name: str, actual, expected, tolerance, rule: str, detail: str = "") -> Check:
    """Element-wise |actual - expected| <= tolerance (a scalar or one bound per element)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Check(name, False, rule=rule, detail=f"shape {actual.shape}, reference {expected.shape}")
    if not np.isfinite(actual).all():
        bad = int((~np.isfinite(actual)).sum())
        return Check(name, False, max_abs=math.inf, max_rel=math.inf, rule=rule, detail=f"{bad} NaN or infinite values from the backend")
    diff = np.abs(actual - expected).ravel()
    bound = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), actual.shape).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(bound > 0, diff / bound, np.where(diff > 0, np.inf, 0.0))
    worst = int(np.argmax(ratios)) if ratios.size else 0
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return Check(
        name, bool(np.all(diff <= bound)), max_abs, max_rel,
        float(bound[worst]) if bound.size else 0.0, float(ratios[worst]) if ratios.size else 0.0, rule, detail,
    )


def structural(name: str, passed: bool, detail: str = "") -> Check:
    return Check(name, passed, rule="must hold exactly", detail=detail)


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckData:
    """Seeded images: one batch for the forward checks (also the test set), a training set for steps."""

    x_batch: np.ndarray
    y_batch: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    #: int64 [steps, batch]: rows of a seeded permutation, so a backend that ignores indices fails.
    step_indices: np.ndarray


def make_check_data(spec: ModelSpec, seed: int = 0, batch: int = DEFAULT_BATCH, steps: int = DEFAULT_STEPS) -> CheckData:
    from cnnbench.datasets.synthetic import make_synthetic

    def images(n: int, data_seed: int):
        x, y = make_synthetic(n, spec.input_shape, spec.num_classes, data_seed)
        return x.astype(np.float32) * np.float32(1 / 255), y

    x_batch, y_batch = images(batch, seed + 7919)
    n_train = batch * steps + batch // 2  # some images never used: indices must be honoured
    x_train, y_train = images(n_train, seed + 104729)
    order = np.random.default_rng(seed).permutation(n_train)[: batch * steps]
    return CheckData(x_batch, y_batch, x_train, y_train, order.reshape(steps, batch).astype(np.int64))


def without_dropout(spec: ModelSpec) -> ModelSpec:
    """The spec with its Dropout layers removed: same weights, deterministic training steps."""
    return replace(spec, layers=tuple(layer for layer in spec.layers if not isinstance(layer, Dropout)))


# --- checks on a session ----------------------------------------------------------------------


class _Stop(Exception):
    """A backend call raised: the checks that need it cannot run."""

    def __init__(self, call: str, detail: str):
        super().__init__(detail)
        self.call, self.detail = call, detail


def _call(what: str, func: Callable, *args):
    """Call a backend method; an exception becomes a failed check naming the call."""
    try:
        return func(*args)
    except Exception as exc:  # the backend's fault, reported as a parity failure
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _Stop(what, f"{what} raised {type(exc).__name__}: {message}"[:300]) from exc


def _shape_hint(spec: ModelSpec, shapes: dict[str, tuple[int, ...]]) -> str:
    """Name the padding mistake that would explain the backend's shapes, if one does."""
    groups: list[list] = []
    for kind in (Conv2D, MaxPool2D):
        layers = [layer for layer in spec.layers if isinstance(layer, kind)]
        groups += [layers] + [[layer] for layer in layers] if len(layers) > 1 else [layers]
    for group in groups:
        names = {layer.name for layer in group}
        layers = tuple(
            replace(layer, padding="VALID" if layer.padding == "SAME" else "SAME") if layer.name in names else layer for layer in spec.layers
        )
        if replace(spec, layers=layers).param_shapes() == shapes:
            switched = ", ".join(f"{layer.name} {'VALID' if layer.padding == 'SAME' else 'SAME'} instead of {layer.padding}" for layer in group)
            return f" (they match the spec with padding {switched})"
    return ""


def _check_weight_shapes(session, spec: ModelSpec) -> Check:
    exported = _call("get_weights", session.get_weights)
    expected = spec.param_shapes()
    shapes = {name: tuple(np.shape(value)) for name, value in exported.items()}
    if shapes == expected:
        return structural("weight shapes", True, f"{len(expected)} tensors as in the spec")
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = [f"{name} is {shapes[name]}, the spec says {expected[name]}" for name in expected if name in shapes and shapes[name] != expected[name]]
    parts = wrong + ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
    return structural("weight shapes", False, "; ".join(parts) + _shape_hint(spec, shapes))


def _check_round_trip(name: str, session, weights: Weights) -> Check:
    """``get_weights`` returns exactly ``weights`` (the worst tensor is reported)."""
    exported = _call("get_weights", session.get_weights)
    if set(exported) != set(weights):
        return structural(name, False, f"get_weights returned {sorted(exported)}, expected {sorted(weights)}")
    rule = "exact: to the native layout and back"
    checks = {key: compare(name, exported[key], weights[key], 0.0, rule) for key in weights}
    worst = max(checks, key=lambda key: (not checks[key].passed, checks[key].max_abs or 0.0))
    check = checks[worst]
    check.detail = "all tensors identical" if check.passed else f"{worst} differs" + (f" ({check.detail})" if check.detail else "")
    return check


def _diagnose_logits(spec: ModelSpec, weights: Weights, x: np.ndarray, logits: np.ndarray) -> str:
    """If the backend matches the reference under another convention, say which."""
    for conventions, meaning in (
        (ref.Conventions(flatten="CHW"), "the flatten after the last pool is in (C, H, W) order instead of (H, W, C)"),
        (ref.Conventions(same_extra="before"), "SAME padding puts the odd extra row/column before instead of after"),
        (ref.Conventions(flatten="CHW", same_extra="before"), "flatten in (C, H, W) order and SAME padding's extra row/column before"),
    ):
        alternative = ref.forward(spec, weights, x, conventions)
        if np.abs(logits - alternative).max() <= LOGITS_REL * np.abs(alternative).max():
            return f"; they match the reference when {meaning}"
    return ""


GRADIENT_RULE = f"{GRAD_REL:g} x max|reference| + near-tie allowance"


def _forward_checks(checks: list[Check], session, spec: ModelSpec, weights: Weights, data: CheckData) -> None:
    x, y = data.x_batch, data.y_batch
    loss_ref, grads_ref, logits_ref, kinks, n_kinks = ref.gradients_and_kinks(spec, weights, x, y, KINK_REL)

    first = np.asarray(_call("predict", session.predict, x))
    second = np.asarray(_call("predict", session.predict, x))
    repeat = compare("predict repeatable", second, first, 0.0, "exact: the same input twice in inference mode")
    if not repeat.passed and repeat.max_abs is not None:
        repeat.detail = "two predict calls on the same batch differ: dropout or other randomness is active in inference"
    checks.append(repeat)

    logits = compare("logits", first, logits_ref, LOGITS_REL * np.abs(logits_ref).max(), f"{LOGITS_REL:g} x max|reference|")
    if not logits.passed and first.shape == logits_ref.shape and np.isfinite(first).all():
        logits.detail = "forward pass differs" + _diagnose_logits(spec, weights, x, first)
    checks.append(logits)

    loss, grads = _call("loss_and_gradients", session.loss_and_gradients, x, y)
    checks.append(compare("loss", loss, loss_ref, LOSS_REL * abs(loss_ref), f"{LOSS_REL:g} x |reference|"))
    for name, expected in grads_ref.items():
        if name not in grads:
            checks.append(structural(f"gradient {name}", False, "missing from loss_and_gradients"))
            continue
        check = compare(f"gradient {name}", grads[name], expected, GRAD_REL * np.abs(expected).max() + kinks[name], GRADIENT_RULE)
        if n_kinks and kinks[name].any():
            check.detail = f"{n_kinks} near-tie ReLU/max-pool decisions allowed for"
        checks.append(check)

    checks.append(_check_round_trip("weights unchanged", session, weights))


def _evaluate_checks(checks: list[Check], session, spec: ModelSpec, weights: Weights, data: CheckData) -> None:
    """On the check batch as test set, with a batch size that leaves a partial last batch."""
    logits_ref = ref.forward(spec, weights, data.x_batch)
    loss_ref, _ = ref.softmax_cross_entropy(logits_ref, data.y_batch)
    n = len(data.y_batch)
    eval_batch = max(1, (3 * n) // 8)
    loss, accuracy = _call("evaluate", session.evaluate, eval_batch)
    checks.append(compare("evaluate loss", loss, loss_ref, LOSS_REL * abs(loss_ref), f"{LOSS_REL:g} x |reference| (batch size {eval_batch} of {n})"))
    # A prediction may legitimately flip where the top two logits are within the logits tolerance.
    top2 = np.sort(logits_ref, axis=1)[:, -2:]
    ambiguous = int((top2[:, 1] - top2[:, 0] <= 2 * LOGITS_REL * np.abs(logits_ref).max()).sum())
    accuracy_ref = float((logits_ref.argmax(axis=1) == data.y_batch).mean())
    checks.append(compare("evaluate accuracy", accuracy, accuracy_ref, ambiguous / n, "1/n per near-tie of the top two logits", f"{accuracy:.4f} vs {accuracy_ref:.4f}"))
    checks.append(_check_round_trip("weights unchanged by evaluate", session, weights))


def _step_allowance(optimizer, t: int, learning_rate: float, grads: Weights, kinks: Weights, before: Weights, after: Weights, delta_max: dict, capped: dict) -> Weights:
    """How far float32 weights may be from the reference's after step ``t`` (docs/decisions.md#parity-tolerances)."""
    allowance: Weights = {}
    if optimizer.name == "adam":
        m_hat, v_hat = optimizer.corrected_moments()
        bound = ref.adam_update_bound(t, optimizer.beta1, optimizer.beta2)
        epsilon_hat = optimizer.epsilon / math.sqrt(1 - optimizer.beta2**t)
    for name, grad in grads.items():
        delta = kinks[name] + GRAD_REL * float(np.abs(grad).max())  # allowed gradient error, per element
        if optimizer.name == "adam":
            # m_hat and sqrt(v_hat) are weighted averages over the steps so far: the largest error bounds theirs.
            delta_max[name] = np.maximum(delta_max.get(name, 0.0), delta)
            denominator = np.sqrt(v_hat[name]) + optimizer.epsilon
            sensitivity = (1 + bound) * delta_max[name] / denominator + np.abs(m_hat[name]) * epsilon_hat / denominator**2
            capped[name] = capped.get(name, False) | ((sensitivity >= 2 * bound) & (np.abs(m_hat[name]) > 0))
            step = learning_rate * np.minimum(2 * bound, sensitivity)
        else:
            step = learning_rate * delta
        allowance[name] = step + ROUNDING * (np.abs(after[name]) + np.abs(after[name] - before[name]))
    return allowance


def _worst(checks: list[Check]) -> Check:
    """The failing check with the largest ratio, else the passing one closest to its tolerance."""
    return max(checks, key=lambda check: (not check.passed, check.ratio if check.ratio is not None else math.inf))


def _step_checks(checks: list[Check], session, spec: ModelSpec, optimizer: str, learning_rate: float, weights: Weights, data: CheckData, loaded: bool) -> None:
    if spec.has_dropout:
        raise ValueError("step checks need a spec without dropout (see without_dropout)")
    steps = len(data.step_indices)
    _call("set_weights", session.set_weights, weights)
    if not loaded:
        _call("load_data", session.load_data, data.x_train, data.y_train, data.x_batch, data.y_batch)

    # One step per call, the reference starting every step from the backend's own weights: each
    # comparison is one step's error, never a trajectory that drifted (see the module docstring).
    opt = ref.make_optimizer(optimizer, learning_rate)
    current = {name: np.asarray(value, np.float32) for name, value in weights.items()}
    losses, losses_ref, grads_by_step, allowances = [], [], [], []
    per_tensor: dict[str, list[Check]] = {name: [] for name in weights}
    delta_max: dict[str, Any] = {}
    capped: dict[str, Any] = {}
    for t, row in enumerate(data.step_indices, start=1):
        step_loss = np.asarray(_call("train_batches", session.train_batches, data.step_indices[t - 1 : t]), dtype=np.float64).ravel()
        after = _call("get_weights", session.get_weights)
        loss_ref, grads, _, kinks, _ = ref.gradients_and_kinks(spec, current, data.x_train[row], data.y_train[row], KINK_REL)
        predicted = opt.step(current, grads)
        allowance = _step_allowance(opt, t, learning_rate, grads, kinks, current, predicted, delta_max, capped)
        for name in weights:
            check = compare(f"{optimizer}: {name} after each step", after.get(name, np.array(np.nan)), predicted[name], allowance[name], "")
            check.detail = f"step {t}"
            per_tensor[name].append(check)
        losses.append(step_loss[0] if step_loss.size == 1 else np.nan)
        losses_ref.append(loss_ref)
        grads_by_step.append(grads)
        allowances.append(allowance)
        current = after
    checks.append(compare(f"{optimizer}: loss of each step", losses, losses_ref, LOSS_REL * np.abs(losses_ref), f"{LOSS_REL:g} x |reference| at the backend's weights (lr {learning_rate:g})"))
    rule = "per element, one step: lr x propagated gradient tolerance (capped at 2 lr) + rounding" if optimizer == "adam" else f"per element, one step: lr x ({GRAD_REL:g} x max|g| + near-tie allowance) + rounding"
    for name, step_checks_of_tensor in per_tensor.items():
        check = _worst(step_checks_of_tensor)
        check.rule = rule
        n_capped = int(np.sum(capped.get(name, False)))
        if n_capped:
            check.detail += f"; Adam allowance capped at 2 lr for {n_capped} of {weights[name].size} elements (|g| within its tolerance of 0)"
        checks.append(check)

    # The same batches in one call: what the benchmark does. Same backend both times, so the
    # allowances of the steps (summed) bound any difference; deterministic backends give none.
    _call("set_weights", session.set_weights, weights)
    one_call = np.asarray(_call("train_batches", session.train_batches, data.step_indices), dtype=np.float64).ravel()
    final = _call("get_weights", session.get_weights)
    cumulative = {name: np.zeros(np.shape(value)) for name, value in weights.items()}
    loss_tolerance = []
    for grads, allowance in zip(grads_by_step, allowances):
        loss_tolerance.append(LOSS_REL * abs(losses_ref[len(loss_tolerance)]) + sum(float((np.abs(grads[name]) * cumulative[name]).sum()) for name in grads))
        for name in cumulative:
            cumulative[name] += allowance[name]
    checks.append(compare(f"{optimizer}: {steps} batches in one call, losses", one_call, losses, loss_tolerance,
                          "as one call per batch, within the steps' allowances", "train_batches with all rows at once"))
    weight_checks = [compare(f"{optimizer}: {steps} batches in one call, weights", final.get(name, np.array(np.nan)), current[name], cumulative[name], "as one call per batch, within the summed step allowances") for name in weights]
    worst = _worst(weight_checks)
    worst.detail = f"worst: {list(weights)[weight_checks.index(worst)]}"
    checks.append(worst)


def summarize(checks: list[Check], skipped: list[str] | None = None) -> dict[str, Any]:
    """The JSON-able result: status, checks by name, and a one-line message."""
    failed = [check for check in checks if not check.passed]
    if failed:
        first = failed[0]
        if first.max_abs is not None and first.tolerance is not None:
            what = f"max abs diff {first.max_abs:.3g} > tolerance {first.tolerance:.3g}" + (f" ({first.detail})" if first.detail else "")
        else:
            what = first.detail or "failed"
        message = f"{first.name}: {what}"
        if len(failed) > 1:
            others = [check.name for check in failed[1:]]
            message += f"; also {', '.join(others[:4])}" + (f" (+{len(others) - 4} more)" if len(others) > 4 else "")
    else:
        message = f"all {len(checks)} checks within tolerance"
    if skipped:
        message += "; not checked: " + "; ".join(skipped)
    result: dict[str, Any] = {
        "status": FAIL if failed else PASS,
        "checks": {check.name: check.to_dict() for check in checks},
        "message": message,
    }
    if skipped:
        result["skipped"] = list(skipped)
    return result


def forward_checks(session, spec: ModelSpec, weights: Weights, data: CheckData) -> list[Check]:
    """Predict, loss and gradients against the reference; ``weights`` already set in ``session``."""
    return _run_checks(lambda checks: _forward_checks(checks, session, spec, weights, data))


def evaluate_checks(session, spec: ModelSpec, weights: Weights, data: CheckData) -> list[Check]:
    """``evaluate`` against the reference; ``weights`` set and ``data`` loaded in ``session``."""
    return _run_checks(lambda checks: _evaluate_checks(checks, session, spec, weights, data))


def step_checks(session, spec: ModelSpec, optimizer: str, learning_rate: float, weights: Weights, data: CheckData, loaded: bool = False) -> list[Check]:
    """K steps of ``train_batches`` from ``weights`` against the reference (``spec`` without dropout).

    ``session`` must have been built with ``optimizer`` and ``learning_rate``; ``loaded``: the
    check data is already loaded in it.
    """
    return _run_checks(lambda checks: _step_checks(checks, session, spec, optimizer, learning_rate, weights, data, loaded))


def _run_checks(run: Callable[[list[Check]], None]) -> list[Check]:
    """Collect the checks ``run`` appends; a raising backend call ends the list with a failure."""
    checks: list[Check] = []
    try:
        run(checks)
    except _Stop as stop:
        checks.append(structural(stop.call, False, stop.detail))
    return checks


def check_session(
    session,
    spec: ModelSpec,
    optimizer: str,
    learning_rate: float,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    *,
    backend=None,
    config: TrainConfig | None = None,
    variant: str | None = None,
    init: str = "glorot-uniform",
    batch: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Parity of an existing session (built from ``spec`` with ``optimizer`` / ``learning_rate``).

    Forward, gradient and evaluate checks run on ``session``. The step checks run on it too when
    ``spec`` has no dropout; otherwise on a dropout-free session from ``backend.create_session``
    (``config`` and ``variant`` as for the real one), or are reported in ``skipped`` without
    ``backend``. Leaves ``session`` with other weights, data and optimizer state: call
    ``set_weights`` and ``load_data`` again before using it.
    """
    from cnnbench.initializers import initial_weights

    weights = initial_weights(spec, init if init != "framework" else "glorot-uniform", seed)
    data = make_check_data(spec, seed, batch, steps)
    skipped: list[str] = []

    def run(checks: list[Check]) -> None:
        shapes = _check_weight_shapes(session, spec)
        checks.append(shapes)
        if not shapes.passed:
            return
        _call("set_weights", session.set_weights, weights)
        checks.append(_check_round_trip("weights round trip", session, weights))
        checks.extend(forward_checks(session, spec, weights, data))
        _call("load_data", session.load_data, data.x_train, data.y_train, data.x_batch, data.y_batch)
        checks.extend(evaluate_checks(session, spec, weights, data))
        if not spec.has_dropout:
            checks.extend(step_checks(session, spec, optimizer, learning_rate, weights, data, loaded=True))
        elif backend is not None:
            step_config = replace(config or TrainConfig(), optimizer=optimizer, learning_rate=learning_rate, dropout=0.0)
            checks.extend(_steps_in_new_session(backend, without_dropout(spec), step_config, variant, weights, data))
        else:
            skipped.append(f"{optimizer} steps (the spec has dropout; pass backend= to check them in a dropout-free session)")

    checks = _run_checks(run)
    return summarize(checks, skipped)


def _steps_in_new_session(backend, spec: ModelSpec, config: TrainConfig, variant, weights: Weights, data: CheckData) -> list[Check]:
    session = _call("create_session", backend.create_session, spec, config, variant)
    try:
        return step_checks(session, spec, config.optimizer, config.learning_rate, weights, data)
    finally:
        try:
            session.close()
        except Exception:  # closing is best effort; the checks already ran
            pass


def check_backend(
    backend,
    spec: ModelSpec,
    config: TrainConfig | None = None,
    variant: str | None = None,
    learning_rates: dict[str, float] | None = None,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    init: str = "glorot-uniform",
    batch: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Everything ``cnnbench check`` compares, in fresh sessions of ``backend`` (import it first).

    ``learning_rates`` maps each optimizer whose steps are checked to its learning rate
    (default: Adam and SGD, ``DEFAULT_LEARNING_RATES``). Adds to ``check_session``'s checks an
    export check: a fresh session's own (framework-initialised) weights, exported to the
    canonical layout, must reproduce its logits in the reference.
    """
    from cnnbench.initializers import initial_weights

    config = config or TrainConfig()
    learning_rates = dict(learning_rates or DEFAULT_LEARNING_RATES)
    weights = initial_weights(spec, init if init != "framework" else "glorot-uniform", seed)
    data = make_check_data(spec, seed, batch, steps)
    first_optimizer = next(iter(learning_rates))
    info: dict[str, Any] = {}

    def run(checks: list[Check]) -> None:
        session_config = replace(config, optimizer=first_optimizer, learning_rate=learning_rates[first_optimizer])
        session = _call("create_session", backend.create_session, spec, session_config, variant)
        info.update(device=getattr(session, "device", ""), settings=_safe_settings(session))
        try:
            shapes = _check_weight_shapes(session, spec)
            checks.append(shapes)
            if not shapes.passed:
                return
            native = {name: np.asarray(value) for name, value in _call("get_weights", session.get_weights).items()}
            exported_logits = np.asarray(_call("predict", session.predict, data.x_batch))
            expected = ref.forward(spec, native, data.x_batch)
            checks.append(compare("export: native -> canonical", exported_logits, expected, LOGITS_REL * np.abs(expected).max(),
                                  f"{LOGITS_REL:g} x max|reference| (logits of the session's own initial weights)"))
            _call("set_weights", session.set_weights, weights)
            checks.append(_check_round_trip("weights round trip", session, weights))
            checks.extend(forward_checks(session, spec, weights, data))
            _call("load_data", session.load_data, data.x_train, data.y_train, data.x_batch, data.y_batch)
            checks.extend(evaluate_checks(session, spec, weights, data))
            for optimizer, learning_rate in learning_rates.items():
                if optimizer == first_optimizer and not spec.has_dropout:
                    checks.extend(step_checks(session, spec, optimizer, learning_rate, weights, data, loaded=True))
                else:
                    step_config = replace(config, optimizer=optimizer, learning_rate=learning_rate, dropout=0.0)
                    checks.extend(_steps_in_new_session(backend, without_dropout(spec), step_config, variant, weights, data))
        finally:
            try:
                session.close()
            except Exception:
                pass

    checks = _run_checks(run)
    return {**summarize(checks), **info}


def _safe_settings(session) -> dict[str, Any]:
    try:
        return dict(session.settings())
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
