"""The conformance kit: what every backend must pass before anyone trusts its numbers.

A plugin author opts in from a pytest file (the pattern of pandas' extension tests)::

    from cnnbench.testing import BackendConformance
    from cnnbench_mine.backend import MyBackend

    class TestMyBackend(BackendConformance):
        backend = MyBackend()          # or: backend_name = "mine" (looked up through entry points)

or overrides the class-scoped ``conformance_backend`` fixture (parametrize it to run several).
The built-in backends run this very suite (tests/test_conformance_builtin.py).

Every check is also a plain ``check_*`` function raising ``ConformanceError`` (an
``AssertionError``) whose message says what is wrong, so the kit works outside pytest too.
The data is tiny and synthetic; sessions are shared per class (a JIT backend compiles once)
and every check starts from ``set_weights(start weights)``, which also resets the optimizer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from cnnbench import reference as ref
from cnnbench import results as results_mod
from cnnbench.backend import Backend, Session
from cnnbench.config import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, DataConfig, TrainConfig
from cnnbench.datasets.base import DatasetArrays
from cnnbench.datasets.synthetic import make_synthetic
from cnnbench.errors import BackendUnavailable
from cnnbench.initializers import initial_weights
from cnnbench.plugins import EXTRA_MODULES_ENV, PluginRecord, Registered, Registry, load_registry
from cnnbench.preprocess import PreparedData, prepare
from cnnbench.timing import epoch_batch_indices
from cnnbench.spec import Dropout, ModelSpec, spec_for

__all__ = [
    "BackendConformance", "ConformanceError", "ConformanceKit", "Trial", "MODELS", "REQUIRED_SETTINGS",
    "check_identity", "check_parameter_count", "check_weights_round_trip", "check_output_shapes",
    "check_predict_matches_spec", "check_loss_and_gradients", "check_evaluate", "check_settings",
    "check_losses_belong_to_rows", "check_batch_order", "check_loss_decreases", "check_accuracy",
    "check_optimizer_step", "check_dropout_only_in_training", "check_seed_determinism",
    "check_results_serialise",
]

#: The two model variants every backend must build: (input shape, classes). "cifar" has dropout 0.2.
MODELS: dict[str, tuple[tuple[int, int, int], int]] = {"mnist": ((28, 28, 1), 10), "cifar": ((32, 32, 3), 10)}
N_TRAIN, N_TEST, BATCH_SIZE = 512, 256, 32
#: Rows per ``train_batches`` call: few distinct shapes, so a JIT backend compiles little.
CHUNK_ROWS = 8
#: Seed of the start weights (independent of ``config.seed``, so seeds can be compared from equal weights).
WEIGHT_SEED = 0
ADAM_LR, SGD_LR = 3e-4, 0.05
#: Synthetic images: class template plus this much noise, standardised (learnable in a few dozen steps).
NOISE = 0.3
#: Keys of ``Session.settings()`` the fairness manifest needs from every backend.
REQUIRED_SETTINGS = ("intra_op_threads", "inter_op_threads", "precision", "mode", "layout")
#: Logits and gradients of a float32 backend against the float64 reference (cnnbench.reference),
#: scale-relative: max |backend - reference| / max |reference|. Loose on purpose - the kit catches
#: bugs (off by > 1e-2); ``cnnbench check`` measures parity with tight, propagated tolerances.
LOGITS_REL, GRADIENT_REL = 1e-4, 1e-3
#: A ReLU input or pooling top-two gap this close (relative) to a tie may go either way in float32.
KINK_REL = 1e-5


class ConformanceError(AssertionError):
    """A backend does not do what the interface promises; the message says what and where."""


def model_spec(model: str) -> ModelSpec:
    shape, classes = MODELS[model]
    return spec_for(shape, classes)


@lru_cache(maxsize=None)
def synthetic_data(model: str) -> PreparedData:
    """Tiny learnable data through the harness's own preprocessing (float32 NHWC, standardised; int64 labels)."""
    shape, classes = MODELS[model]
    x_train, y_train = make_synthetic(N_TRAIN, shape, classes, seed=11, noise=NOISE)
    x_test, y_test = make_synthetic(N_TEST, shape, classes, seed=12, noise=NOISE)
    return prepare(DatasetArrays(x_train, y_train, x_test, y_test), DataConfig(standardize=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy in float64 (the reference's)."""
    return ref.softmax_cross_entropy(np.asarray(logits, dtype=np.float64), labels)[0]


# --- sessions under test -----------------------------------------------------------------------


@dataclass
class Trial:
    """One session of the backend with its spec, config, data and start weights."""

    model: str
    spec: ModelSpec
    config: TrainConfig
    session: Session
    data: PreparedData
    start_weights: dict[str, np.ndarray]
    #: ``get_weights()`` right after ``create_session`` (before any ``set_weights``), or the error it raised.
    created_weights: dict[str, np.ndarray] | None = None
    created_error: str = ""
    prepared: bool = False

    def prepare(self) -> "Trial":
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

    def rows(self, epoch: int = 1) -> np.ndarray:
        """The harness's batch order for ``epoch``: int64 [n_batches, batch_size]."""
        return epoch_batch_indices(self.config.seed, epoch, len(self.data.y_train), self.config.batch_size)

    def train(self, rows: np.ndarray) -> np.ndarray:
        """``train_batches`` in chunks of ``CHUNK_ROWS``, checking what each call returns."""
        losses = []
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = np.ascontiguousarray(rows[start : start + CHUNK_ROWS], dtype=np.int64)
            returned = self.session.train_batches(chunk)
            try:
                values = np.asarray(returned, dtype=np.float64)
            except (TypeError, ValueError):
                raise ConformanceError(f"train_batches returned {type(returned).__name__}, not an array of per-batch losses") from None
            if values.shape != (len(chunk),):
                raise ConformanceError(
                    f"train_batches returned shape {values.shape} for {len(chunk)} batches: one mean loss per row of batch_indices expected"
                )
            losses.append(values)
        self.session.sync()
        return np.concatenate(losses) if losses else np.zeros(0)

    def weights(self) -> dict[str, np.ndarray]:
        return self.session.get_weights()


class ConformanceKit:
    """Builds and shares the sessions of one backend (and variant); closes them at the end.

    Use as a context manager: the backend's ``process_environment`` is applied to
    ``os.environ`` while it is open (a framework reads it at import), then restored.
    """

    def __init__(self, backend: Backend, variant: str | None = None, backend_options: dict[str, str] | None = None,
                 device: str = "auto", threads: int | None = 1):
        self.backend = backend
        self.variant = variant if variant is not None else (backend.variants[0] if backend.variants else None)
        self.backend_options = dict(backend_options or {})
        self.device, self.threads = device, threads
        self._trials: dict[tuple, Trial] = {}
        self._open: list[Session] = []
        self._saved_env: dict[str, str | None] = {}
        self._imported = False

    def config(self, optimizer: str = "adam", seed: int = 0) -> TrainConfig:
        return TrainConfig(
            optimizer=optimizer, learning_rate=ADAM_LR if optimizer == "adam" else SGD_LR, batch_size=BATCH_SIZE,
            seed=seed, threads=self.threads, device=self.device, backend_options=self.backend_options,
            warmup_steps=2, eval_batch_size=N_TEST,
        ).validate()

    def __enter__(self) -> "ConformanceKit":
        for key, value in self.backend.process_environment(self.variant, self.config()).items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = str(value)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def import_framework(self) -> None:
        if not self._imported:
            self.backend.import_framework(self.variant)
            self._imported = True

    def _build(self, model: str, optimizer: str, seed: int) -> Trial:
        self.import_framework()
        spec, config = model_spec(model), self.config(optimizer, seed)
        session = self.backend.create_session(spec, config, self.variant)
        self._open.append(session)
        trial = Trial(model, spec, config, session, synthetic_data(model), initial_weights(spec, "glorot-uniform", WEIGHT_SEED))
        try:
            trial.created_weights = session.get_weights()
        except Exception as exc:  # reported by the parameter-count check, with this text
            trial.created_error = f"{type(exc).__name__}: {exc}"
        return trial

    def built(self, model: str, optimizer: str = "adam", seed: int = 0) -> Trial:
        """The shared session for (model, optimizer, seed), as built (weights and data maybe not set yet)."""
        key = (model, optimizer, seed)
        if key not in self._trials:
            self._trials[key] = self._build(model, optimizer, seed)
        return self._trials[key]

    def trial(self, model: str, optimizer: str = "adam", seed: int = 0) -> Trial:
        """The shared session, ready: start weights set and data loaded."""
        return self.built(model, optimizer, seed).prepare()

    @contextmanager
    def fresh_trial(self, model: str, optimizer: str = "adam", seed: int = 0) -> Iterator[Trial]:
        """A new, unshared session (for checks that need a fresh RNG), closed afterwards."""
        trial = self._build(model, optimizer, seed)
        try:
            yield trial.prepare()
        finally:
            self._close_session(trial.session)

    def _close_session(self, session: Session) -> None:
        if session in self._open:
            self._open.remove(session)
            session.close()

    def close(self) -> None:
        errors = []
        for session in list(self._open):
            try:
                self._close_session(session)
            except Exception as exc:
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


# --- checks ------------------------------------------------------------------------------------


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def check_identity(backend: Backend, variant: str | None = None) -> None:
    """Name, framework, framework version and variants as the CLI and results need them."""
    problems = []
    name = getattr(backend, "name", "")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name or ""):
        problems.append(f"name {name!r} must be a non-empty lower-case identifier (letters, digits, '-', '_', '.'): --frameworks takes it and splits on ',' and ':'")
    if not isinstance(backend.framework, str) or not backend.framework.strip():
        problems.append("framework (the human name, e.g. 'PyTorch') is empty")
    variants = backend.variants
    if not isinstance(variants, tuple) or not all(isinstance(v, str) and v and ":" not in v and "," not in v for v in variants):
        problems.append(f"variants must be a tuple of non-empty names without ':' or ',', got {variants!r}")
    if not isinstance(backend.deterministic, bool):
        problems.append(f"deterministic must be a bool, got {backend.deterministic!r}")
    reason = backend.unavailable_reason()
    if reason is not None and not isinstance(reason, str):
        problems.append(f"unavailable_reason() must return None or a string, got {reason!r}")
    version = backend.framework_version(variant)
    if not isinstance(version, str) or not version.strip():
        problems.append(f"framework_version() must return the installed version as a non-empty string, got {version!r}")
    elif reason is None and not re.search(r"\d", version):
        problems.append(f"framework_version() is {version!r} although the backend is available: read it with cnnbench.backend.distribution_version()")
    if problems:
        raise ConformanceError(f"{name or type(backend).__name__}: " + "; ".join(problems))


def check_parameter_count(spec: ModelSpec, weights: dict[str, np.ndarray] | None, when: str = "", error: str = "") -> None:
    """``weights`` has exactly the spec's canonical names and shapes (float32): same count, same layout."""
    where = f" {when}" if when else ""
    if weights is None:
        raise ConformanceError(f"get_weights(){where} raised {error}")
    if not isinstance(weights, dict):
        raise ConformanceError(f"get_weights(){where} returned {type(weights).__name__}, a dict name -> array expected")
    expected = spec.param_shapes()
    shapes = {name: tuple(np.shape(value)) for name, value in weights.items()}
    count = sum(int(np.prod(shape)) for shape in shapes.values())
    problems = [f"{name} shape {_fmt_shape(shapes[name])} != {_fmt_shape(want)}" for name, want in expected.items() if name in shapes and shapes[name] != want]
    missing = [name for name in expected if name not in shapes]
    extra = [name for name in shapes if name not in expected]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("unexpected " + ", ".join(extra))
    if problems or count != spec.num_params:
        arrays = f" in {len(shapes)} arrays" if len(shapes) != len(expected) else ""
        raise ConformanceError(
            f"parameter count {spec.num_params:,} expected ({spec.name}, {len(expected)} arrays), backend has {count:,}{arrays}{where} "
            f"({'; '.join(problems)}); canonical names and shapes: spec.param_shapes()"
        )
    wrong_dtype = [f"{name} is {np.asarray(value).dtype}" for name, value in weights.items() if np.asarray(value).dtype != np.float32]
    if wrong_dtype:
        raise ConformanceError(f"get_weights(){where} must return float32 NumPy arrays: " + ", ".join(wrong_dtype))


def check_weights_round_trip(trial: Trial) -> None:
    """``set_weights`` then ``get_weights`` gives the same arrays back, as copies."""
    trial.prepare()
    rng = np.random.default_rng(5)
    weights = {name: rng.normal(0, 0.1, size=shape).astype(np.float32) for name, shape in trial.spec.param_shapes().items()}
    trial.session.set_weights({name: value.copy() for name, value in weights.items()})
    back = trial.weights()
    check_parameter_count(trial.spec, back, "after set_weights")
    for name, value in weights.items():
        if not np.array_equal(back[name], value):
            diff = float(np.max(np.abs(back[name].astype(np.float64) - value)))
            raise ConformanceError(f"set_weights/get_weights do not round-trip: {name} comes back different (max |diff| {diff:.3g}); convert canonical <-> native layout exactly")
    first = next(iter(back))
    if not back[first].flags.writeable:  # a read-only export cannot alias the live weights through writes
        trial.restart()
        return
    back[first][...] = 123.0
    again = trial.weights()
    if np.any(again[first] == 123.0):
        raise ConformanceError(f"get_weights returned a view of the live weights ({first} changed when the returned array was written): return copies")
    trial.restart()


def check_output_shapes(trial: Trial) -> None:
    """``predict`` gives float32 [n, classes] logits for any n; ``evaluate`` two floats."""
    trial.restart()
    classes = trial.spec.num_classes
    for n in (1, 5):
        logits = trial.session.predict(trial.data.x_test[:n])
        shape = tuple(np.shape(logits))
        if shape != (n, classes):
            raise ConformanceError(f"predict(x of shape {_fmt_shape(trial.data.x_test[:n].shape)}) returned shape {_fmt_shape(shape)}, expected ({n}, {classes})")
        dtype = np.asarray(logits).dtype
        if dtype != np.float32:
            raise ConformanceError(f"predict returned {dtype} logits, float32 expected")
        if not np.all(np.isfinite(logits)):
            raise ConformanceError("predict returned non-finite logits from the start weights")
    outcome = trial.session.evaluate(100)
    if not (isinstance(outcome, tuple) and len(outcome) == 2 and all(isinstance(v, (float, int, np.floating)) for v in outcome)):
        raise ConformanceError(f"evaluate(batch_size) must return (loss, accuracy) as two floats, got {outcome!r}")
    loss, accuracy = map(float, outcome)
    if not (math.isfinite(loss) and 0.0 <= accuracy <= 1.0):
        raise ConformanceError(f"evaluate returned loss {loss} and accuracy {accuracy}: a finite loss and an accuracy in 0..1 expected")


def _scaled_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: relative error that ignores near-zero elements."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return math.inf
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def _mismatch_hint(spec: ModelSpec, weights: dict[str, np.ndarray], x: np.ndarray, got: np.ndarray) -> str:
    alternatives = {
        "flattens in (C, H, W) order; the spec flattens NHWC activations in (H, W, C) order": ref.Conventions(flatten="CHW"),
        "pads SAME with the odd extra row/column before; the spec puts it after (1 before, 2 after for 4x4)": ref.Conventions(same_extra="before"),
    }
    for text, conventions in alternatives.items():
        if _scaled_error(got, ref.forward(spec, weights, x, conventions)) <= LOGITS_REL:
            return f": the backend {text}"
    return " (check the layout conversion in set_weights - kernels HWIO and (in, out) - the flatten order (H, W, C), SAME padding and activations)"


def check_predict_matches_spec(trial: Trial) -> None:
    """``predict`` with the start weights equals the spec's float64 reference forward pass."""
    trial.restart()
    x = trial.data.x_test[:8]
    got = np.asarray(trial.session.predict(x), dtype=np.float64)
    error = _scaled_error(got, ref.forward(trial.spec, trial.start_weights, x))
    if error > LOGITS_REL:
        raise ConformanceError(
            f"predict logits differ from the spec's reference forward pass (cnnbench.reference) by {error:.3g} of their scale "
            f"(tolerance {LOGITS_REL:g}) with the same canonical weights" + _mismatch_hint(trial.spec, trial.start_weights, x, got)
        )


def check_loss_and_gradients(trial: Trial) -> None:
    """Mean cross-entropy and its gradients in the canonical layout, dropout off, weights untouched."""
    trial.restart()
    x, y = trial.data.x_train[:8], trial.data.y_train[:8]
    loss, grads = trial.session.loss_and_gradients(x, y)
    loss2, grads2 = trial.session.loss_and_gradients(x, y)
    after = trial.weights()
    changed = [name for name, value in trial.start_weights.items() if not np.array_equal(after.get(name), value)]
    if changed:
        raise ConformanceError(f"loss_and_gradients changed the weights ({', '.join(changed)}): it must not train")
    check_parameter_count(trial.spec, grads, "(gradients from loss_and_gradients)")
    # ReLU and max-pool gradients jump at near-ties, where float32 may land on either side:
    # the reference says how far each gradient may move there (``allowance``).
    want_loss, want_grads, _, allowance, _ = ref.gradients_and_kinks(trial.spec, trial.start_weights, x, y, KINK_REL)
    if not (isinstance(loss, (float, int, np.floating)) and abs(float(loss) - want_loss) <= 1e-4 * max(1.0, abs(want_loss))):
        raise ConformanceError(
            f"loss_and_gradients returned loss {loss!r}, the reference mean cross-entropy is {want_loss:.6f}"
            + (" (dropout must be inactive here)" if trial.spec.has_dropout else " (the mean, not the sum, of softmax cross-entropy over the batch?)")
        )
    if abs(float(loss2) - float(loss)) > 1e-6 * max(1.0, abs(float(loss))) or any(_scaled_error(grads2[n], grads[n]) > 1e-6 for n in grads):
        raise ConformanceError("loss_and_gradients gave different results for the same input twice: dropout must be inactive and nothing may change")
    for name, want in want_grads.items():
        got = np.asarray(grads[name], dtype=np.float64)
        if got.shape != want.shape:
            raise ConformanceError(f"the gradient of {name} has shape {_fmt_shape(got.shape)}, its weight {_fmt_shape(want.shape)}")
        error = float(np.max(np.abs(got - want) - allowance[name])) / max(float(np.max(np.abs(want))), 1e-30)
        if error <= GRADIENT_REL:
            continue
        scale = float(np.sum(got * want) / max(float(np.sum(want * want)), 1e-300))  # got ~ scale * want?
        if abs(scale / len(y) - 1) < 0.01:
            hint = f"it is {len(y)}x the reference: the gradient of the summed loss, not the mean"
        elif abs(scale * len(y) - 1) < 0.01:
            hint = f"it is 1/{len(y)} of the reference"
        elif abs(scale + 1) < 0.01:
            hint = "its sign is flipped"
        elif not np.all(np.isfinite(got)):
            hint = "it is not finite"
        else:
            hint = "not the gradient of this weight in the canonical layout (transposed or permuted?)"
        raise ConformanceError(
            f"the gradient of {name} differs from the reference (cnnbench.reference backprop) by {error:.3g} of its scale "
            f"beyond what near-ties of ReLU and max pooling allow (tolerance {GRADIENT_REL:g}): {hint}"
        )


def check_evaluate(trial: Trial) -> None:
    """``evaluate`` covers the whole test set, in inference mode, whatever the batch size."""
    trial.restart()
    x_test, y_test = trial.data.x_test, trial.data.y_test
    logits = np.concatenate([np.asarray(trial.session.predict(x_test[i : i + 64]), dtype=np.float64) for i in range(0, len(y_test), 64)])
    want_loss, want_accuracy = cross_entropy(logits, y_test), float(np.mean(logits.argmax(axis=1) == y_test))
    for batch_size in (len(y_test), 100):
        loss, accuracy = map(float, trial.session.evaluate(batch_size))
        if abs(loss - want_loss) > 1e-4 * max(1.0, want_loss) or abs(accuracy - want_accuracy) > 1.5 / len(y_test):
            partial = f" (the last batch has {len(y_test) % batch_size} of {batch_size} images: is it dropped or weighted as a full batch?)" if len(y_test) % batch_size else ""
            raise ConformanceError(
                f"evaluate({batch_size}) gave loss {loss:.6f}, accuracy {accuracy:.4f}; from predict on the {len(y_test)} test images: "
                f"loss {want_loss:.6f}, accuracy {want_accuracy:.4f}{partial}"
            )
    again = tuple(map(float, trial.session.evaluate(100)))
    if again != (loss, accuracy):
        raise ConformanceError(f"evaluate gave {again} the second time, {(loss, accuracy)} the first: dropout must be inactive in evaluate")


def check_settings(trial: Trial) -> None:
    """The fairness manifest, device name and sync behave as the harness needs."""
    trial.prepare()
    trial.session.sync()
    settings = trial.session.settings()
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ConformanceError(f"settings() must return a dict with string keys, got {settings!r}")
    missing = [key for key in REQUIRED_SETTINGS if key not in settings]
    if missing:
        raise ConformanceError(f"settings() lacks {', '.join(missing)}: the fairness manifest needs {', '.join(REQUIRED_SETTINGS)}")
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConformanceError(f"settings() must hold JSON values (str, int, float, bool, None, lists, dicts): {exc}") from None
    if not isinstance(trial.session.device, str) or not trial.session.device:
        raise ConformanceError(f"Session.device must name the device, e.g. 'cpu', got {trial.session.device!r}")
    memory = trial.session.peak_device_memory_mb()
    if memory is not None and not (isinstance(memory, (int, float)) and memory >= 0):
        raise ConformanceError(f"peak_device_memory_mb() must return None or MiB >= 0, got {memory!r}")


def check_losses_belong_to_rows(trial: Trial) -> None:
    """The loss ``train_batches`` reports for batch 0 is the loss of rows[0] at the start weights.

    Only for a model without dropout (train-mode and inference losses then agree).
    """
    if trial.spec.has_dropout:
        raise ValueError("check_losses_belong_to_rows needs a model without dropout")
    rows = trial.rows(1)[:CHUNK_ROWS]
    trial.restart()

    def loss_at_start(row: np.ndarray) -> float:
        return float(trial.session.loss_and_gradients(trial.data.x_train[row], trial.data.y_train[row])[0])

    expected = loss_at_start(rows[0])
    reported = trial.train(rows)
    if not np.all(np.isfinite(reported)):
        raise ConformanceError(f"train_batches returned non-finite losses {reported.tolist()}")
    first = float(reported[0])
    if abs(first - expected) <= 1e-4 * max(1.0, abs(expected)):
        return
    trial.restart()
    at_start = [loss_at_start(row) for row in rows]  # which row did it train first?
    match = next((i for i, value in enumerate(at_start) if abs(first - value) <= 1e-4 * max(1.0, abs(value))), None)
    if match is not None:
        raise ConformanceError(
            f"train_batches trained row {match} of batch_indices first (its loss {at_start[match]:.5f} was reported for batch 0, row 0's is "
            f"{at_start[0]:.5f}): rows must run in the given order"
        )
    raise ConformanceError(
        f"the loss reported for batch 0 ({first:.5f}) is not the loss of the images in batch_indices[0] at the start weights "
        f"({at_start[0]:.5f}): train on x_train[batch_indices[i]] (and report the mean loss before the update)"
    )


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)) for k in a))


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
            f"training rows 0..{len(rows) - 1} and the same rows reversed gave identical weights: train_batches does not honour the "
            "batch order (does it sort or shuffle the rows itself?)"
        )
    gap = _distance(w_together, w_one_by_one)
    if gap > 0.1 * order_effect:
        raise ConformanceError(
            f"train_batches does not run the rows in the given order: after one call with {len(rows)} rows the weights differ from "
            f"{len(rows)} one-row calls of the same rows by {gap:.3g}, about as much as training them in reverse order ({order_effect:.3g}); "
            f"reported losses {np.round(together, 4).tolist()} vs {np.round(one_by_one, 4).tolist()}"
        )


def check_loss_decreases(trial: Trial, steps: int = 16, factor: float = 0.6) -> None:
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
            f"test loss went from {float(before):.4f} to {float(after):.4f} after {steps} {cfg.optimizer} steps (lr {cfg.learning_rate:g}, "
            f"batch {cfg.batch_size}); below {factor:g}x expected: are the updates applied to the weights predict/evaluate use? "
            f"training losses {np.round(losses, 3).tolist()}"
        )


def check_accuracy(trial: Trial, min_accuracy: float = 0.9, epochs: int = 2) -> None:
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


def check_optimizer_step(trial: Trial) -> None:
    """The first two updates are the configured optimizer's, as ``cnnbench.reference`` writes it
    (plain SGD; bias-corrected Adam with cnnbench.config's betas and epsilon), fed the backend's own gradients."""
    if trial.spec.has_dropout:
        raise ValueError("check_optimizer_step needs a model without dropout")
    cfg = trial.config
    optimizer = ref.make_optimizer(cfg.optimizer, cfg.learning_rate)
    trial.restart()
    before = trial.weights()
    for step, row in enumerate(trial.rows(1)[:2], start=1):
        grads = trial.session.loss_and_gradients(trial.data.x_train[row], trial.data.y_train[row])[1]
        expected = optimizer.step(before, {name: np.asarray(g, dtype=np.float64) for name, g in grads.items()})
        trial.train(row[None])
        after = trial.weights()
        if cfg.optimizer == "adam":
            formula = f"Adam (lr {cfg.learning_rate:g}, betas {ADAM_BETA1}/{ADAM_BETA2}, epsilon {ADAM_EPSILON:g}, bias-corrected)"
            _, v_hat = optimizer.corrected_moments()
        else:
            formula = f"-lr * gradient (SGD, lr {cfg.learning_rate:g}, no momentum)"
        for name in trial.spec.param_shapes():
            moved = after[name].astype(np.float64) - before[name]
            want = expected[name] - before[name]
            if cfg.optimizer == "adam":
                selected = np.sqrt(v_hat[name]) > 1e-4  # where epsilon's placement and gradient noise cannot matter
                tolerance = 0.02 * cfg.learning_rate
            else:
                selected = np.ones(moved.shape, dtype=bool)
                tolerance = 1e-3 * float(np.max(np.abs(want))) + 1e-7
            if not np.any(selected):
                continue
            error = float(np.max(np.abs(moved - want)[selected]))
            if error > tolerance:
                scale = float(np.sum(moved * want) / max(float(np.sum(want * want)), 1e-300))
                raise ConformanceError(
                    f"update {step} of {name} is not {formula}: max |change - expected| {error:.3g} "
                    f"(the change is {scale:.3g}x the expected step); use cnnbench.config's optimizer settings and reset "
                    "the optimizer state in set_weights"
                )
        before = after


def check_dropout_only_in_training(trial: Trial) -> None:
    """Inference (predict, evaluate, loss_and_gradients) is deterministic; training applies dropout."""
    if not trial.spec.has_dropout:
        raise ValueError("check_dropout_only_in_training needs a model with dropout")
    trial.restart()
    x = trial.data.x_test[:16]
    if not np.array_equal(trial.session.predict(x), trial.session.predict(x)):
        raise ConformanceError("predict gave different logits for the same input twice: dropout must be off in inference")
    row = trial.rows(1)[0]
    inference_loss = float(trial.session.loss_and_gradients(trial.data.x_train[row], trial.data.y_train[row])[0])
    training_loss = float(trial.train(row[None])[0])
    if abs(training_loss - inference_loss) <= 1e-4 * max(1.0, inference_loss):
        rates = ", ".join(f"{layer.rate:g}" for layer in trial.spec.layers if isinstance(layer, Dropout))
        raise ConformanceError(
            f"the training loss of a batch ({training_loss:.6f}) equals its inference loss ({inference_loss:.6f}) at the same weights: "
            f"dropout (rates {rates} from the spec) is not applied in train_batches"
        )


def check_seed_determinism(kit: ConformanceKit, model: str = "cifar", seeds: tuple[int, int] = (3, 4)) -> None:
    """Two fresh sessions with the same seed train to identical weights; another seed changes dropout."""
    runs = []
    for seed in (seeds[0], seeds[0], seeds[1]):
        with kit.fresh_trial(model, seed=seed) as trial:
            rows = epoch_batch_indices(0, 1, len(trial.data.y_train), trial.config.batch_size)[:CHUNK_ROWS]
            losses = trial.train(rows)
            runs.append((losses, trial.weights()))
    (losses_a, weights_a), (losses_b, weights_b), (losses_c, _) = runs
    differing = [name for name in weights_a if not np.array_equal(weights_a[name], weights_b[name])]
    if differing or not np.array_equal(losses_a, losses_b):
        worst = max(differing, key=lambda n: float(np.max(np.abs(weights_a[n] - weights_b[n]))), default=None)
        detail = f"max weight difference {float(np.max(np.abs(weights_a[worst] - weights_b[worst]))):.3g} in {worst}" if worst else "losses differ"
        raise ConformanceError(
            f"two fresh sessions with seed {seeds[0]} trained to different results ({detail}) although backend.deterministic is True: "
            "seed the dropout RNG from config.seed and use deterministic kernels, or declare deterministic = False"
        )
    if model_spec(model).has_dropout and np.array_equal(losses_a, losses_c):
        raise ConformanceError(f"seeds {seeds[0]} and {seeds[1]} gave identical training losses: the dropout RNG must be seeded from config.seed")


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
                f"{cls.__qualname__} is not importable by the worker process: define it at module level of an importable module, "
                "register it through an entry point, or set worker_plugin_module on the test class"
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
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{path}[{i}]"))), None)
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
    backend: Backend, variant: str | None, results_dir: Path, *, plugin_module: str | None = None,
    timeout_s: float = 600, backend_options: dict[str, str] | None = None, device: str = "auto", threads: int | None = 1,
) -> None:
    """A short ``cnnbench run`` through the real runner and worker; the saved file loads back equal."""
    from cnnbench.runner import BackendTarget, RunOptions, run_benchmark

    results_dir = Path(results_dir)
    scratch = Path(tempfile.mkdtemp(prefix="cnnbench-kit-", dir=results_dir))
    env = worker_environment(backend, scratch, plugin_module)
    registry = Registry(backends={backend.name: Registered(backend, PluginRecord(name="conformance-kit", module=type(backend).__module__))})
    train = TrainConfig(batch_size=BATCH_SIZE, epochs=1, warmup_steps=2, eval_batch_size=128, device=device, threads=threads,
                        backend_options=dict(backend_options or {}))
    data = DataConfig(dataset="synthetic", options={"n_train": 256, "n_test": 128})
    options = RunOptions(timeout_s=timeout_s, results_dir=str(results_dir), extra_env=env)
    result, path = run_benchmark([BackendTarget(backend.name, variant)], registry, train, data, options)
    row = result.backends[0]
    if row.status != results_mod.OK:
        raise ConformanceError(f"the worker run ended {row.status}: {row.reason}" + _log_tail(row.reason))
    spec = spec_for(MODELS["mnist"][0], MODELS["mnist"][1])
    if row.parameters != spec.num_params:
        raise ConformanceError(f"the worker counted {row.parameters} parameters (from get_weights), {spec.num_params:,} expected")
    measurement = row.repeats[0]
    if measurement.test_accuracy is None or not 0 <= measurement.test_accuracy <= 1 or not (measurement.train_throughput or 0) > 0:
        raise ConformanceError(f"the worker's measurement is incomplete: accuracy {measurement.test_accuracy}, throughput {measurement.train_throughput}")
    if path is None or not path.is_file():
        raise ConformanceError(f"run_benchmark saved no result file in {results_dir}")
    loaded = results_mod.load(path)
    difference = _first_difference(result, loaded)
    if difference:
        raise ConformanceError(f"the result does not survive saving and loading ({path}): {difference}")


# --- the pytest base class ---------------------------------------------------------------------

models = pytest.mark.parametrize("model", list(MODELS))


class BackendConformance:
    """Subclass in a ``test_*.py`` file and set ``backend`` (or ``backend_name``); pytest runs the checks.

    Class attributes tune the kit; override the class-scoped fixtures ``conformance_backend``
    (and ``conformance_variant``) to supply backends another way, e.g. parametrized.
    """

    #: The backend under test (an instance). Or leave None and set ``backend_name``.
    backend: Backend | None = None
    #: A registered backend name, looked up through the ``cnnbench`` entry points.
    backend_name: str | None = None
    #: Which variant to test; None = the backend's first (default) variant.
    variant: str | None = None
    #: ``--backend-option`` values, without the ``name.`` prefix added: {"xla": "true"} -> "<name>.xla".
    backend_options: dict[str, str] = {}
    #: Accuracy a short run on synthetic data must reach.
    min_accuracy: float = 0.9
    #: Device for the kit's sessions ("auto", "cpu", "cuda").
    device: str = "auto"
    #: ``config.threads`` for the kit's sessions: one keeps the kit fast and repeatable on a shared
    #: machine (the kit checks correctness, not speed); None = all cores, as a real run.
    threads: int | None = 1
    #: A module that registers the backend in the worker process (only when it is not importable otherwise).
    worker_plugin_module: str | None = None
    #: Seconds the serialisation run's worker may take.
    worker_timeout_s: float = 600

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_backend(cls, request) -> Backend:
        test_class = request.cls
        if test_class.backend is not None:
            return test_class.backend
        if test_class.backend_name:
            registry = load_registry()
            if test_class.backend_name not in registry.backends:
                plugins = ", ".join(f"{p.name} ({p.status}{': ' + p.error if p.error else ''})" for p in registry.plugins)
                raise ConformanceError(
                    f"no backend named {test_class.backend_name!r} is registered; plugins found: {plugins or 'none'} "
                    "(entry points come from installed distributions: pip install -e <your plugin>)"
                )
            return registry.backends[test_class.backend_name].item
        raise ConformanceError(f"{test_class.__name__}: set `backend = YourBackend()` or `backend_name = '...'`, or override the conformance_backend fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_variant(cls, request, conformance_backend) -> str | None:
        return request.cls.variant

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_kit(cls, request, conformance_backend, conformance_variant) -> Iterator[ConformanceKit]:
        reason = conformance_backend.unavailable_reason()
        if reason:
            pytest.skip(f"{conformance_backend.name} unavailable: {reason}")
        options = {f"{conformance_backend.name}.{k}": v for k, v in request.cls.backend_options.items()}
        kit = ConformanceKit(conformance_backend, conformance_variant, options, device=request.cls.device, threads=request.cls.threads)
        with kit:
            try:
                kit.import_framework()
            except BackendUnavailable as exc:
                pytest.skip(f"{conformance_backend.name} unavailable: {exc}")
            yield kit

    @staticmethod
    def _trial(kit: ConformanceKit, model: str, optimizer: str = "adam", prepared: bool = True) -> Trial:
        try:
            return kit.trial(model, optimizer) if prepared else kit.built(model, optimizer)
        except BackendUnavailable as exc:
            pytest.skip(f"{kit.backend.name} unavailable: {exc}")

    def test_identity(self, conformance_kit):
        check_identity(conformance_kit.backend, conformance_kit.variant)

    @models
    def test_parameter_count(self, conformance_kit, model):
        trial = self._trial(conformance_kit, model, prepared=False)
        check_parameter_count(trial.spec, trial.created_weights, "after create_session", trial.created_error)

    @models
    def test_weights_round_trip(self, conformance_kit, model):
        check_weights_round_trip(self._trial(conformance_kit, model))

    @models
    def test_output_shapes(self, conformance_kit, model):
        check_output_shapes(self._trial(conformance_kit, model))

    @models
    def test_predict_matches_spec(self, conformance_kit, model):
        check_predict_matches_spec(self._trial(conformance_kit, model))

    @models
    def test_loss_and_gradients(self, conformance_kit, model):
        check_loss_and_gradients(self._trial(conformance_kit, model))

    @models
    def test_evaluate(self, conformance_kit, model):
        check_evaluate(self._trial(conformance_kit, model))

    def test_settings(self, conformance_kit):
        check_settings(self._trial(conformance_kit, "mnist"))

    def test_losses_belong_to_rows(self, conformance_kit):
        check_losses_belong_to_rows(self._trial(conformance_kit, "mnist"))

    def test_batch_order_honoured(self, conformance_kit):
        check_batch_order(self._trial(conformance_kit, "mnist"))

    @pytest.mark.parametrize("optimizer", ["adam", "sgd"])
    def test_optimizer_step(self, conformance_kit, optimizer):
        check_optimizer_step(self._trial(conformance_kit, "mnist", optimizer))

    @models
    def test_loss_decreases(self, conformance_kit, model):
        check_loss_decreases(self._trial(conformance_kit, model))

    @models
    def test_accuracy_after_short_run(self, conformance_kit, model):
        check_accuracy(self._trial(conformance_kit, model), type(self).min_accuracy)

    def test_dropout_only_in_training(self, conformance_kit):
        check_dropout_only_in_training(self._trial(conformance_kit, "cifar"))

    def test_same_seed_same_result(self, conformance_kit):
        if not conformance_kit.backend.deterministic:
            pytest.skip(f"{conformance_kit.backend.name} does not claim determinism (deterministic = False)")
        try:
            check_seed_determinism(conformance_kit)
        except BackendUnavailable as exc:
            pytest.skip(f"{conformance_kit.backend.name} unavailable: {exc}")

    def test_results_serialise(self, conformance_kit, tmp_path_factory):
        cls = type(self)
        check_results_serialise(
            conformance_kit.backend, conformance_kit.variant, tmp_path_factory.mktemp("results"),
            plugin_module=cls.worker_plugin_module, timeout_s=cls.worker_timeout_s, backend_options=conformance_kit.backend_options,
            device=conformance_kit.device, threads=conformance_kit.threads,
        )


__all__ += ["models", "synthetic_data", "model_spec", "worker_environment"]
