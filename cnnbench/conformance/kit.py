"""The conformance kit's checks as plain functions: each raises ``ConformanceError`` saying what is wrong.

They run the engine's checks (``cnnbench.conformance``) on the kit's shared sessions (``Trial``),
plus the behaviour a benchmark needs (identity, batch order, learning, settings, serialisation).
A framework exception inside any check becomes a ``ConformanceError`` naming the check, the
backend call and the likely cause.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from cnnbench import reference as ref
from cnnbench import results as results_mod
from cnnbench.backend import Backend, Session
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.conformance.calls import BackendCallFailed
from cnnbench.conformance.data import CHECK_ROWS, MODELS, N_TEST, N_TRAIN, model_spec, synthetic_data
from cnnbench.conformance.diagnose import likely_cause
from cnnbench.conformance.numerics import evaluate_checks, gradient_checks, logits_checks, step_checks
from cnnbench.conformance.outcome import Array, Check, Weights, failures, message
from cnnbench.conformance.probes import (
    DROPOUT_PROBE_LEARNING_RATE,
    DROPOUT_ROWS,
    SEED_ROWS,
    adam_probe_checks,
    dropout_checks,
    dropout_losses,
    dropout_probe_layers,
    dropout_seed_checks,
    read_dropout,
    reset_checks,
)
from cnnbench.conformance.threads import measure_threads, threads_disagreement
from cnnbench.conformance.tolerances import LOSS_DECREASE, LOSS_REL, MIN_ACCURACY, ORDER_GAP
from cnnbench.errors import BackendUnavailable
from cnnbench.plugins import EXTRA_MODULES_ENV, PluginRecord, Registered, Registry, load_registry
from cnnbench.preprocess import PreparedData
from cnnbench.spec import Dropout, ModelSpec, spec_for
from cnnbench.timing import epoch_batch_indices

BATCH_SIZE = 32
#: Rows per ``train_batches`` call: few distinct shapes, so a JIT backend compiles little.
CHUNK_ROWS = 8
#: Seed of the start weights (independent of ``config.seed``, so seeds can be compared from equal weights).
WEIGHT_SEED = 0
ADAM_LR, SGD_LR = 3e-4, 0.05
#: Keys of ``Session.settings()`` the fairness manifest needs from every backend.
REQUIRED_SETTINGS = ("intra_op_threads", "inter_op_threads", "precision", "mode", "layout")

P = ParamSpec("P")
R = TypeVar("R")


class ConformanceError(AssertionError):
    """A backend does not do what the interface promises; the message says what and where."""


class KitUsageError(ValueError):
    """A check called on a model it does not apply to: the caller's mistake, raised as is."""


class ConformanceWarning(UserWarning):
    """Something a fair benchmark row needs that the kit measured but cannot prove wrong (e.g. threads)."""


def cross_entropy(logits: Array, labels: Array) -> float:
    """Mean softmax cross-entropy in float64 (the reference's)."""
    return ref.softmax_cross_entropy(np.asarray(logits, dtype=np.float64), labels)[0]


def _interface_call(tb: Any) -> str:
    """The outermost Session or Backend method in a traceback: the call the check made into the backend."""
    for frame, _ in traceback.walk_tb(tb):
        owner = frame.f_locals.get("self")
        name = frame.f_code.co_name
        if isinstance(owner, (Session, Backend)) and not name.startswith("__"):
            return name.lstrip("_")
    return ""


def _spec_in(args: tuple[Any, ...]) -> ModelSpec | None:
    for arg in args:
        if isinstance(arg, Trial):
            return arg.spec
        if isinstance(arg, ModelSpec):
            return arg
    return None


def kit_check(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a raw exception inside a check into a ``ConformanceError`` naming the check and the likely cause."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ConformanceError, BackendUnavailable, KitUsageError):
            raise
        except BackendCallFailed as failed:
            raise ConformanceError(f"{func.__name__}: {failed.detail}") from failed.error
        except Exception as exc:
            where = _interface_call(exc.__traceback__) or "a call into the backend"
            cause = likely_cause(_spec_in(tuple(args)), where, exc)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConformanceError(
                f"{func.__name__}: {where} raised {type(exc).__name__}: {first}"[:400]
                + (f"; likely cause: {cause}" if cause else "")
            ) from exc

    return wrapper


def raise_failures(checks: list[Check], what: str = "") -> None:
    """Raise ``ConformanceError`` with the engine's one-line message when any check failed."""
    if failures(checks):
        raise ConformanceError((f"{what}: " if what else "") + message(checks))


# --- sessions under test -----------------------------------------------------------------------


@dataclass
class Trial:
    """One session of the backend with its spec, config, data and start weights."""

    model: str
    spec: ModelSpec
    config: TrainConfig
    session: Session
    data: PreparedData
    start_weights: Weights
    #: ``get_weights()`` right after ``create_session`` (before any ``set_weights``), or the error it raised.
    created_weights: Weights | None = None
    created_error: str = ""
    prepared: bool = False

    def prepare(self) -> Trial:
        """Start weights, then the data, once: what the worker does before its clock starts."""
        if not self.prepared:
            self.session.set_weights(self.start_weights)
            self.session.load_data(self.data.x_train, self.data.y_train, self.data.x_test, self.data.y_test)
            self.session.sync()
            self.prepared = True
        return self

    def restart(self) -> None:
        """Back to the start weights with a fresh optimizer state (``set_weights`` resets it)."""
        self.prepare()
        self.session.set_weights(self.start_weights)

    def rows(self, epoch: int = 1) -> Array:
        """The harness's batch order for ``epoch``: int64 [n_batches, batch_size]."""
        return epoch_batch_indices(self.config.seed, epoch, len(self.data.y_train), self.config.batch_size)

    def train(self, rows: Array) -> Array:
        """``train_batches`` in chunks of ``CHUNK_ROWS``, checking what each call returns."""
        losses = []
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = np.ascontiguousarray(rows[start : start + CHUNK_ROWS], dtype=np.int64)
            returned = self.session.train_batches(chunk)
            try:
                values = np.asarray(returned, dtype=np.float64)
            except (TypeError, ValueError):
                raise ConformanceError(
                    f"train_batches returned {type(returned).__name__}, not an array of per-batch losses"
                ) from None
            if values.shape != (len(chunk),):
                raise ConformanceError(
                    f"train_batches returned shape {values.shape} for {len(chunk)} batches: "
                    "one mean loss per row of batch_indices expected"
                )
            losses.append(values)
        self.session.sync()
        return np.concatenate(losses) if losses else np.zeros(0)

    def weights(self) -> Weights:
        """The session's current weights."""
        return self.session.get_weights()


class ConformanceKit:
    """Builds and shares the sessions of one backend (and variant); closes them at the end.

    Use as a context manager: the backend's ``process_environment`` is applied to
    ``os.environ`` while it is open (a framework reads it at import), then restored.
    """

    def __init__(
        self,
        backend: Backend,
        variant: str | None = None,
        backend_options: dict[str, str] | None = None,
        device: str = "auto",
        threads: int | None = 1,
    ):
        self.backend = backend
        self.variant = variant if variant is not None else (backend.variants[0] if backend.variants else None)
        self.backend_options = dict(backend_options or {})
        self.device, self.threads = device, threads
        self._trials: dict[tuple[str, str, int], Trial] = {}
        self._open: list[Session] = []
        self._saved_env: dict[str, str | None] = {}
        self._imported = False

    def config(self, optimizer: str = "adam", seed: int = 0, learning_rate: float | None = None) -> TrainConfig:
        """The kit's training configuration (small batches, one thread unless told otherwise)."""
        rate = learning_rate if learning_rate is not None else (ADAM_LR if optimizer == "adam" else SGD_LR)
        return TrainConfig(
            optimizer=optimizer,
            learning_rate=rate,
            batch_size=BATCH_SIZE,
            seed=seed,
            threads=self.threads,
            device=self.device,
            backend_options=self.backend_options,
            warmup_steps=2,
            eval_batch_size=N_TEST,
        ).validate()

    def __enter__(self) -> ConformanceKit:
        for key, value in self.backend.process_environment(self.variant, self.config()).items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = str(value)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def import_framework(self) -> None:
        """Import the backend's framework once (after the environment is in place)."""
        if not self._imported:
            self.backend.import_framework(self.variant)
            self._imported = True

    def _build(self, model: str, config: TrainConfig) -> Trial:
        self.import_framework()
        spec = model_spec(model)
        session = self.backend.create_session(spec, config, self.variant)
        self._open.append(session)
        weights = initial_weights_for(spec)
        trial = Trial(model, spec, config, session, synthetic_data(model), weights)
        try:
            trial.created_weights = session.get_weights()
        except Exception as exc:  # noqa: BLE001 - reported by the parameter-count check, with this text
            trial.created_error = f"{type(exc).__name__}: {exc}"
        return trial

    def built(self, model: str, optimizer: str = "adam", seed: int = 0) -> Trial:
        """The shared session for (model, optimizer, seed), as built (weights and data maybe not set yet)."""
        key = (model, optimizer, seed)
        if key not in self._trials:
            self._trials[key] = self._build(model, self.config(optimizer, seed))
        return self._trials[key]

    def trial(self, model: str, optimizer: str = "adam", seed: int = 0) -> Trial:
        """The shared session, ready: start weights set and data loaded."""
        return self.built(model, optimizer, seed).prepare()

    @contextmanager
    def fresh_trial(
        self,
        model: str,
        optimizer: str = "adam",
        seed: int = 0,
        learning_rate: float | None = None,
        prepared: bool = True,
    ) -> Iterator[Trial]:
        """A new, unshared session (for checks that need a fresh RNG or optimizer), closed afterwards."""
        trial = self._build(model, self.config(optimizer, seed, learning_rate))
        try:
            yield trial.prepare() if prepared else trial
        finally:
            self._close_session(trial.session)

    def _close_session(self, session: Session) -> None:
        if session in self._open:
            self._open.remove(session)
            session.close()

    def close(self) -> None:
        """Close every session and restore the environment."""
        errors = []
        for session in list(self._open):
            try:
                self._close_session(session)
            except Exception as exc:  # noqa: BLE001 - collected and reported together below
                errors.append(f"{type(exc).__name__}: {exc}")
        self._trials.clear()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if errors:
            raise ConformanceError(f"Session.close() raised: {'; '.join(errors)}")


def initial_weights_for(spec: ModelSpec) -> Weights:
    """The kit's start weights: the harness's glorot-uniform from ``WEIGHT_SEED``."""
    from cnnbench.initializers import initial_weights

    weights = initial_weights(spec, "glorot-uniform", WEIGHT_SEED)
    assert weights is not None
    return weights


# --- identity and structure -------------------------------------------------------------------


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


@kit_check
def check_identity(backend: Backend, variant: str | None = None) -> None:
    """Name, framework, framework version and variants as the CLI and results need them."""
    problems = []
    # Read as plain objects: a third party's class may hold anything, which is what this check is for.
    name: object = getattr(backend, "name", "")
    framework: object = getattr(backend, "framework", "")
    variants: object = getattr(backend, "variants", ())
    deterministic: object = getattr(backend, "deterministic", False)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name or ""):
        problems.append(
            f"name {name!r} must be a non-empty lower-case identifier (letters, digits, '-', '_', '.'): "
            "--frameworks takes it and splits on ',' and ':'"
        )
    if not isinstance(framework, str) or not framework.strip():
        problems.append("framework (the human name, e.g. 'PyTorch') is empty")
    if not isinstance(variants, tuple) or not all(
        isinstance(v, str) and v and ":" not in v and "," not in v for v in variants
    ):
        problems.append(f"variants must be a tuple of non-empty names without ':' or ',', got {variants!r}")
    if not isinstance(deterministic, bool):
        problems.append(f"deterministic must be a bool, got {deterministic!r}")
    reason: object = backend.unavailable_reason()
    if reason is not None and not isinstance(reason, str):
        problems.append(f"unavailable_reason() must return None or a string, got {reason!r}")
    version: object = backend.framework_version(variant)
    if not isinstance(version, str) or not version.strip():
        problems.append(f"framework_version() must return the installed version as a non-empty string, got {version!r}")
    elif reason is None and not re.search(r"\d", version):
        problems.append(
            f"framework_version() is {version!r} although the backend is available: read it with "
            "cnnbench.backend.distribution_version()"
        )
    if problems:
        raise ConformanceError(f"{name or type(backend).__name__}: " + "; ".join(problems))


@kit_check
def check_parameter_count(spec: ModelSpec, weights: object, when: str = "", error: str = "") -> None:
    """``weights`` has exactly the spec's canonical names and shapes (float32): same count, same layout."""
    from cnnbench.conformance.diagnose import shape_hint

    where = f" {when}" if when else ""
    if weights is None:
        raise ConformanceError(f"get_weights(){where} raised {error}")
    if not isinstance(weights, dict):
        raise ConformanceError(f"get_weights(){where} returned {type(weights).__name__}, a dict name -> array expected")
    expected = spec.param_shapes()
    shapes = {name: tuple(np.shape(value)) for name, value in weights.items()}
    count = sum(int(np.prod(shape)) for shape in shapes.values())
    problems = [
        f"{name} shape {_fmt_shape(shapes[name])} != {_fmt_shape(want)}"
        for name, want in expected.items()
        if name in shapes and shapes[name] != want
    ]
    missing = [name for name in expected if name not in shapes]
    extra = [name for name in shapes if name not in expected]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("unexpected " + ", ".join(extra))
    total = spec.num_params + spec.num_state
    if problems or count != total:
        arrays = f" in {len(shapes)} arrays" if len(shapes) != len(expected) else ""
        state = f" with {spec.num_state:,} batch-norm statistics" if spec.num_state else ""
        raise ConformanceError(
            f"parameter count {total:,}{state} expected ({spec.name}, {len(expected)} arrays), "
            f"backend has {count:,}{arrays}{where} ({'; '.join(problems)}){shape_hint(spec, shapes)}; "
            "canonical names and shapes: spec.param_shapes()"
        )
    wrong_dtype = [
        f"{name} is {np.asarray(value).dtype}"
        for name, value in weights.items()
        if np.asarray(value).dtype != np.float32
    ]
    if wrong_dtype:
        raise ConformanceError(f"get_weights(){where} must return float32 NumPy arrays: " + ", ".join(wrong_dtype))


@kit_check
def check_weights_round_trip(trial: Trial) -> None:
    """``set_weights`` then ``get_weights`` gives the same arrays back, as copies."""
    trial.prepare()
    rng = np.random.default_rng(5)
    weights = {
        name: rng.normal(0, 0.1, size=shape).astype(np.float32) for name, shape in trial.spec.param_shapes().items()
    }
    for name in trial.spec.state_shapes():  # a variance must stay positive
        weights[name] = np.abs(weights[name]) + np.float32(0.5)
    trial.session.set_weights({name: value.copy() for name, value in weights.items()})
    back = trial.weights()
    check_parameter_count(trial.spec, back, "after set_weights")
    for name, value in weights.items():
        if not np.array_equal(back[name], value):
            diff = float(np.max(np.abs(back[name].astype(np.float64) - value)))
            raise ConformanceError(
                f"set_weights/get_weights do not round-trip: {name} comes back different "
                f"(max |diff| {diff:.3g}); convert canonical <-> native layout exactly"
            )
    first = next(iter(back))
    if back[first].flags.writeable:  # a read-only export cannot alias the live weights through writes
        back[first][...] = 123.0
        if np.any(trial.weights()[first] == 123.0):
            raise ConformanceError(
                f"get_weights returned a view of the live weights ({first} changed when the "
                "returned array was written): return copies"
            )
    trial.restart()


@kit_check
def check_output_shapes(trial: Trial) -> None:
    """``predict`` gives float32 [n, classes] logits for any n; ``evaluate`` two floats."""
    trial.restart()
    classes = trial.spec.num_classes
    for n in (1, 5):
        logits = trial.session.predict(trial.data.x_test[:n])
        shape = tuple(np.shape(logits))
        if shape != (n, classes):
            raise ConformanceError(
                f"predict(x of shape {_fmt_shape(trial.data.x_test[:n].shape)}) returned shape "
                f"{_fmt_shape(shape)}, expected ({n}, {classes})"
            )
        dtype = np.asarray(logits).dtype
        if dtype != np.float32:
            raise ConformanceError(f"predict returned {dtype} logits, float32 expected")
        if not np.all(np.isfinite(logits)):
            raise ConformanceError("predict returned non-finite logits from the start weights")
    outcome = trial.session.evaluate(100)
    if not (
        isinstance(outcome, tuple)
        and len(outcome) == 2
        and all(isinstance(v, (float, int, np.floating)) for v in outcome)
    ):
        raise ConformanceError(f"evaluate(batch_size) must return (loss, accuracy) as two floats, got {outcome!r}")
    loss, accuracy = map(float, outcome)
    if not (math.isfinite(loss) and 0.0 <= accuracy <= 1.0):
        raise ConformanceError(
            f"evaluate returned loss {loss} and accuracy {accuracy}: a finite loss and an accuracy in 0..1 expected"
        )


# --- numbers against the reference (the engine's checks) ----------------------------------------


@kit_check
def check_predict_matches_spec(trial: Trial) -> None:
    """``predict`` with the start weights equals the spec's float64 reference forward pass."""
    trial.restart()
    raise_failures(logits_checks(trial.session, trial.spec, trial.start_weights, trial.data.x_test[:8]))


@kit_check
def check_loss_and_gradients(trial: Trial) -> None:
    """Mean cross-entropy and its gradients in the canonical layout, dropout off, weights untouched."""
    trial.restart()
    x, y = trial.data.x_train[:8], trial.data.y_train[:8]
    raise_failures(gradient_checks(trial.session, trial.spec, trial.start_weights, x, y))


@kit_check
def check_evaluate(trial: Trial) -> None:
    """``evaluate`` covers the whole test set, in inference mode, whatever the batch size."""
    trial.restart()
    raise_failures(
        evaluate_checks(trial.session, trial.spec, trial.start_weights, trial.data.x_test, trial.data.y_test)
    )


@kit_check
def check_optimizer_step(trial: Trial) -> None:
    """Three one-batch steps, then the same rows in one call, follow the configured optimizer (reference gradients)."""
    if trial.spec.has_dropout:
        raise KitUsageError("check_optimizer_step needs a model without dropout")
    trial.prepare()
    cfg = trial.config
    raise_failures(
        step_checks(
            trial.session,
            trial.spec,
            cfg.optimizer,
            cfg.learning_rate,
            trial.start_weights,
            trial.data.x_train,
            trial.data.y_train,
            trial.rows(1)[:CHECK_ROWS],
            loaded=True,
        )
    )


@kit_check
def check_optimizer_reset(kit: ConformanceKit, model: str = "mnist") -> None:
    """On a session of its own: after two Adam steps, ``set_weights`` makes the next step a first step again."""
    with kit.fresh_trial(model, "adam") as trial:
        raise_failures(
            reset_checks(
                trial.session,
                trial.spec,
                trial.config.learning_rate,
                trial.start_weights,
                trial.data.x_train,
                trial.data.y_train,
                trial.rows(1)[:CHECK_ROWS],
            )
        )


@kit_check
def check_adam_hyper_parameters(kit: ConformanceKit, model: str = "mnist") -> None:
    """On a session of its own: Adam's epsilon (value and placement), bias correction and betas, from probe weights."""
    with kit.fresh_trial(model, "adam") as trial:
        checks, reason = adam_probe_checks(
            trial.session,
            trial.spec,
            trial.config.learning_rate,
            trial.start_weights,
            trial.data.x_train,
            trial.data.y_train,
            trial.rows(1)[:CHECK_ROWS],
        )
        if reason:
            raise ConformanceError(f"cannot probe {reason}")
        raise_failures(checks)


@kit_check
def check_dropout_statistics(kit: ConformanceKit, model: str = "cifar") -> None:
    """On a session of its own: the last Dropout's rate, its 1/(1 - rate) scaling and fresh masks per image and step."""
    spec = model_spec(model)
    if dropout_probe_layers(spec) is None:
        raise KitUsageError(f"the {model} model has no dropout before its output layer")
    with kit.fresh_trial(model, "adam", learning_rate=DROPOUT_PROBE_LEARNING_RATE, prepared=False) as trial:
        raise_failures(dropout_checks(dropout_losses(trial.session, trial.spec, DROPOUT_ROWS), trial.spec))


@kit_check
def check_dropout_seed(kit: ConformanceKit, model: str = "cifar", seeds: tuple[int, int] = (3, 4)) -> None:
    """Fresh sessions: one seed twice draws the same dropout masks, another seed other masks."""
    spec = model_spec(model)
    counts: list[tuple[int, Array | None]] = []
    for seed in (seeds[0], seeds[0], seeds[1]):
        with kit.fresh_trial(model, "adam", seed, DROPOUT_PROBE_LEARNING_RATE, prepared=False) as trial:
            counts.append((seed, read_dropout(dropout_losses(trial.session, spec, SEED_ROWS), spec.num_classes).counts))
    raise_failures(dropout_seed_checks(counts))


# --- behaviour a benchmark relies on --------------------------------------------------------------


@kit_check
def check_settings(trial: Trial) -> None:
    """The fairness manifest, device name and sync behave as the harness needs."""
    trial.prepare()
    trial.session.sync()
    settings = trial.session.settings()
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ConformanceError(f"settings() must return a dict with string keys, got {settings!r}")
    missing = [key for key in REQUIRED_SETTINGS if key not in settings]
    if missing:
        raise ConformanceError(
            f"settings() lacks {', '.join(missing)}: the fairness manifest needs {', '.join(REQUIRED_SETTINGS)}"
        )
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConformanceError(
            f"settings() must hold JSON values (str, int, float, bool, None, lists, dicts): {exc}"
        ) from None
    if not isinstance(trial.session.device, str) or not trial.session.device:
        raise ConformanceError(f"Session.device must name the device, e.g. 'cpu', got {trial.session.device!r}")
    memory = trial.session.peak_device_memory_mb()
    if memory is not None and not (isinstance(memory, (int, float)) and memory >= 0):
        raise ConformanceError(f"peak_device_memory_mb() must return None or MiB >= 0, got {memory!r}")


@kit_check
def check_threads(trial: Trial, rows: int = CHUNK_ROWS) -> float | None:
    """CPU time over wall time while ``train_batches`` runs, against ``config.threads``; warns when they disagree."""
    from cnnbench.frameworks import available_cores

    if trial.config.device == "cuda" or not str(trial.session.device).lower().startswith("cpu"):
        return None
    trial.restart()
    trial.train(trial.rows(1)[:1])  # a compiled backend compiles outside the measurement
    with measure_threads() as use:
        trial.train(trial.rows(1)[:rows])
    problem = threads_disagreement(trial.config.threads, use.used, available_cores())
    if problem:
        warnings.warn(ConformanceWarning(f"threads not honoured: {problem}"), stacklevel=3)
    trial.restart()
    return use.used


def _loss_close(a: float, b: float) -> bool:
    return abs(a - b) <= LOSS_REL * max(1.0, abs(b))


@kit_check
def check_losses_belong_to_rows(trial: Trial) -> None:
    """The loss ``train_batches`` reports for batch 0 is the loss of rows[0] at the start weights (no dropout)."""
    if trial.spec.has_dropout:
        raise KitUsageError("check_losses_belong_to_rows needs a model without dropout")
    rows = trial.rows(1)[:CHUNK_ROWS]
    trial.restart()

    def loss_at_start(row: Array) -> float:
        return float(trial.session.loss_and_gradients(trial.data.x_train[row], trial.data.y_train[row])[0])

    expected = loss_at_start(rows[0])
    reported = trial.train(rows)
    if not np.all(np.isfinite(reported)):
        raise ConformanceError(f"train_batches returned non-finite losses {reported.tolist()}")
    first = float(reported[0])
    if _loss_close(first, expected):
        return
    trial.restart()
    at_start = [loss_at_start(row) for row in rows]  # which row did it train first?
    match = next((i for i, value in enumerate(at_start) if _loss_close(first, value)), None)
    if match is not None:
        raise ConformanceError(
            f"train_batches trained row {match} of batch_indices first (its loss {at_start[match]:.5f} was "
            f"reported for batch 0, row 0's is {at_start[0]:.5f}): rows must run in the given order"
        )
    raise ConformanceError(
        f"the loss reported for batch 0 ({first:.5f}) is not the loss of the images in batch_indices[0] at the start "
        f"weights ({at_start[0]:.5f}): train on x_train[batch_indices[i]] (and report the mean loss before the update)"
    )


def _distance(a: Weights, b: Weights) -> float:
    return math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)) for k in a))


@kit_check
def check_batch_order(trial: Trial) -> None:
    """One call with rows [0..7] equals eight one-row calls in that order, and differs from the reverse order."""
    rows = trial.rows(1)[:CHUNK_ROWS]
    trial.restart()
    together = trial.train(rows)
    w_together = trial.weights()
    trial.restart()
    one_by_one = np.concatenate([trial.train(rows[i : i + 1]) for i in range(len(rows))])
    w_one_by_one = trial.weights()
    trial.restart()
    trial.train(rows[::-1])
    w_reversed = trial.weights()
    order_effect = _distance(w_together, w_reversed)
    if order_effect == 0:
        raise ConformanceError(
            f"training rows 0..{len(rows) - 1} and the same rows reversed gave identical weights: train_batches "
            "does not honour the batch order (does it sort or shuffle the rows itself?)"
        )
    gap = _distance(w_together, w_one_by_one)
    if gap > ORDER_GAP * order_effect:
        raise ConformanceError(
            f"train_batches does not run the rows in the given order: after one call with {len(rows)} rows the weights "
            f"differ from {len(rows)} one-row calls of the same rows by {gap:.3g}, about as much as training them in "
            f"reverse order ({order_effect:.3g}); reported losses {np.round(together, 4).tolist()} vs "
            f"{np.round(one_by_one, 4).tolist()}"
        )


@kit_check
def check_loss_decreases(trial: Trial, steps: int = 16, factor: float = LOSS_DECREASE) -> None:
    """A few optimizer steps on learnable data lower the test loss (the optimizer updates the model)."""
    trial.restart()
    before, _ = trial.session.evaluate(N_TEST)
    losses = trial.train(trial.rows(1)[:steps])
    after, _ = trial.session.evaluate(N_TEST)
    if not np.all(np.isfinite(losses)):
        raise ConformanceError(f"training losses became non-finite: {losses.tolist()}")
    if not float(after) < factor * float(before):
        cfg = trial.config
        raise ConformanceError(
            f"test loss went from {float(before):.4f} to {float(after):.4f} after {steps} {cfg.optimizer} steps "
            f"(lr {cfg.learning_rate:g}, batch {cfg.batch_size}); below {factor:g}x expected: are the updates "
            f"applied to the weights predict/evaluate use? training losses {np.round(losses, 3).tolist()}"
        )


@kit_check
def check_accuracy(trial: Trial, min_accuracy: float = MIN_ACCURACY, epochs: int = 2) -> None:
    """A short run (``epochs`` x 16 Adam steps) reaches ``min_accuracy`` on the synthetic test set."""
    trial.restart()
    for epoch in range(1, epochs + 1):
        trial.train(trial.rows(epoch))
    loss, accuracy = map(float, trial.session.evaluate(N_TEST))
    if not accuracy >= min_accuracy:
        raise ConformanceError(
            f"test accuracy {accuracy:.3f} (loss {loss:.4f}) after {epochs} epochs of {N_TRAIN} synthetic images; "
            f"at least {min_accuracy:g} expected (the reference backends reach about 1.0)"
        )


@kit_check
def check_dropout_only_in_training(trial: Trial) -> None:
    """Inference (predict, evaluate, loss_and_gradients) is deterministic; training applies dropout."""
    if not trial.spec.has_dropout:
        raise KitUsageError("check_dropout_only_in_training needs a model with dropout")
    trial.restart()
    x = trial.data.x_test[:16]
    if not np.array_equal(trial.session.predict(x), trial.session.predict(x)):
        raise ConformanceError(
            "predict gave different logits for the same input twice: dropout must be off in inference"
        )
    if tuple(map(float, trial.session.evaluate(100))) != tuple(map(float, trial.session.evaluate(100))):
        raise ConformanceError(
            "evaluate gave different results for the same weights twice: dropout must be off in evaluate"
        )
    row = trial.rows(1)[0]
    inference_loss = float(trial.session.loss_and_gradients(trial.data.x_train[row], trial.data.y_train[row])[0])
    training_loss = float(trial.train(row[None])[0])
    if _loss_close(training_loss, inference_loss):
        rates = ", ".join(f"{layer.rate:g}" for layer in trial.spec.layers if isinstance(layer, Dropout))
        raise ConformanceError(
            f"the training loss of a batch ({training_loss:.6f}) equals its inference loss ({inference_loss:.6f}) "
            f"at the same weights: dropout (rates {rates} from the spec) is not applied in train_batches"
        )


@kit_check
def check_seed_determinism(kit: ConformanceKit, model: str = "cifar", seeds: tuple[int, int] = (3, 4)) -> None:
    """Two fresh sessions with the same seed train to identical weights; another seed changes dropout."""
    runs = []
    for seed in (seeds[0], seeds[0], seeds[1]):
        with kit.fresh_trial(model, seed=seed) as trial:
            rows = epoch_batch_indices(0, 1, len(trial.data.y_train), trial.config.batch_size)[:CHUNK_ROWS]
            runs.append((trial.train(rows), trial.weights()))
    (losses_a, weights_a), (losses_b, weights_b), (losses_c, _) = runs
    differing = [name for name in weights_a if not np.array_equal(weights_a[name], weights_b[name])]
    if differing or not np.array_equal(losses_a, losses_b):
        worst = max(differing, key=lambda n: float(np.max(np.abs(weights_a[n] - weights_b[n]))), default=None)
        detail = (
            f"max weight difference {float(np.max(np.abs(weights_a[worst] - weights_b[worst]))):.3g} in {worst}"
            if worst
            else "losses differ"
        )
        raise ConformanceError(
            f"two fresh sessions with seed {seeds[0]} trained to different results ({detail}) although "
            "backend.deterministic is True: seed the dropout RNG from config.seed and use deterministic kernels, "
            "or declare deterministic = False"
        )
    if model_spec(model).has_dropout and np.array_equal(losses_a, losses_c):
        raise ConformanceError(
            f"seeds {seeds[0]} and {seeds[1]} gave identical training losses: the dropout RNG must be "
            "seeded from config.seed"
        )


# --- results through the real runner ----------------------------------------------------------


def _same_class(a: type, b: type) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def worker_environment(backend: Backend, scratch: Path, plugin_module: str | None = None) -> dict[str, str]:
    """Variables that let a worker process (a fresh interpreter) find ``backend`` by its name.

    Nothing when an installed plugin registers this very class; otherwise a generated plugin
    module (or ``plugin_module``) goes into ``$CNNBENCH_PLUGIN_MODULES`` and this process's
    ``sys.path`` into ``$PYTHONPATH``, so a backend defined in a test file is importable.
    """
    cls = type(backend)
    if plugin_module is None:
        registered = load_registry().backends.get(backend.name)
        if registered is not None:
            if _same_class(type(registered.item), cls):
                return {}
            other = type(registered.item)
            raise ConformanceError(
                f"backend name {backend.name!r} is already registered by plugin {registered.plugin.name!r} "
                f"({other.__module__}.{other.__qualname__}): a backend needs a unique name"
            )
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            raise ConformanceError(
                f"{cls.__qualname__} is not importable by the worker process: define it at module level of an "
                "importable module, register it through an entry point, or set worker_plugin_module on the test class"
            )
        plugin_module = f"cnnbench_kit_plugin_{abs(hash((cls.__module__, cls.__qualname__))):x}"
        (scratch / f"{plugin_module}.py").write_text(
            '"""Generated by cnnbench.testing: registers the backend under test in the worker process."""\n'
            "from cnnbench import hookimpl\n\n\n@hookimpl\ndef register_backends(register):\n"
            f"    from {cls.__module__} import {cls.__qualname__.split('.')[0]} as owner\n\n"
            f"    backend_class = owner{''.join('.' + part for part in cls.__qualname__.split('.')[1:])}\n"
            "    register(backend_class())\n"
        )
    modules = [m for m in os.environ.get(EXTRA_MODULES_ENV, "").split(",") if m.strip()] + [plugin_module]
    paths = [str(scratch)] + [p for p in sys.path if p and os.path.isdir(p)]
    return {EXTRA_MODULES_ENV: ",".join(modules), "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def _first_difference(a: Any, b: Any, path: str = "result") -> str | None:
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        if type(a) is not type(b):
            return f"{path}: {type(a).__name__} != {type(b).__name__}"
        for f in dataclasses.fields(a):
            found = _first_difference(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
            if found:
                return found
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        return next((d for k in a if (d := _first_difference(a[k], b[k], f"{path}[{k!r}]"))), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{path}: {type(a).__name__} of {len(a)} != {type(b).__name__} of {len(b)}"
        pairs = enumerate(zip(a, b, strict=True))
        return next((d for i, (x, y) in pairs if (d := _first_difference(x, y, f"{path}[{i}]"))), None)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    if type(a) is not type(b) or a != b:
        return f"{path}: {a!r} ({type(a).__name__}) before saving, {b!r} ({type(b).__name__}) after loading"
    return None


def _log_tail(reason: str, lines: int = 15) -> str:
    match = re.search(r"\(log: ([^)]+)\)", reason)
    if not match:
        return ""
    try:
        text = Path(match.group(1)).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n--- worker log (last lines) ---\n" + "\n".join(text[-lines:])


def check_results_serialise(
    backend: Backend,
    variant: str | None,
    results_dir: Path,
    *,
    plugin_module: str | None = None,
    timeout_s: float = 600,
    backend_options: dict[str, str] | None = None,
    device: str = "auto",
    threads: int | None = 1,
) -> None:
    """A short ``cnnbench run`` through the real runner and worker; the saved file loads back equal."""
    from cnnbench.modes import BackendTarget
    from cnnbench.runner import RunOptions, run_benchmark

    results_dir = Path(results_dir)
    scratch = Path(tempfile.mkdtemp(prefix="cnnbench-kit-", dir=results_dir))
    env = worker_environment(backend, scratch, plugin_module)
    record = PluginRecord(name="conformance-kit", module=type(backend).__module__)
    from cnnbench.datasets import plugin as builtin_datasets
    from cnnbench.models import plugin as builtin_models

    builtin = load_registry([builtin_datasets, builtin_models], include_entry_points=False)
    registry = Registry(
        backends={backend.name: Registered(backend, record)}, datasets=builtin.datasets, models=builtin.models
    )
    train = TrainConfig(
        batch_size=BATCH_SIZE,
        epochs=1,
        warmup_steps=2,
        eval_batch_size=128,
        device=device,
        threads=threads,
        backend_options=dict(backend_options or {}),
    )
    data = DataConfig(dataset="synthetic", options={"n_train": 256, "n_test": 128})
    options = RunOptions(timeout_s=timeout_s, results_dir=str(results_dir), extra_env=env)
    result, path = run_benchmark([BackendTarget(backend.name, variant)], registry, train, data, options)
    row = result.backends[0]
    if row.status != results_mod.OK:
        raise ConformanceError(f"the worker run ended {row.status}: {row.reason}" + _log_tail(row.reason))
    spec = spec_for(MODELS["mnist"][0], MODELS["mnist"][1])
    if row.parameters != spec.num_params:
        raise ConformanceError(
            f"the worker counted {row.parameters} parameters (from get_weights), {spec.num_params:,} expected"
        )
    measurement = row.repeats[0]
    if (
        measurement.test_accuracy is None
        or not 0 <= measurement.test_accuracy <= 1
        or not (measurement.train_throughput or 0) > 0
    ):
        raise ConformanceError(
            f"the worker's measurement is incomplete: accuracy {measurement.test_accuracy}, "
            f"throughput {measurement.train_throughput}"
        )
    if path is None or not path.is_file():
        raise ConformanceError(f"run_benchmark saved no result file in {results_dir}")
    loaded = results_mod.load(path)
    difference = _first_difference(result, loaded)
    if difference:
        raise ConformanceError(f"the result does not survive saving and loading ({path}): {difference}")
