"""The interface a framework plugin implements. The harness owns the clock; a backend never times.

Lifecycle, all in one worker process per backend (see ``cnnbench.worker``):

1. ``Backend.process_environment(variant, config)`` - in the parent, before the worker starts:
   environment variables the framework reads at import (e.g. ``KERAS_BACKEND``).
2. ``Backend.import_framework(variant)`` - timed by the harness as the *import* phase.
3. ``Backend.create_session(spec, config, variant)`` - timed as the *build* phase.
4. ``Session.set_weights(initial)`` (unless the init scheme is ``framework``), then
   ``Session.load_data(...)`` once, outside every clock.
5. ``Session.train_batches(indices)`` repeatedly, in the order the harness chooses;
   ``Session.sync()`` before every clock read; ``Session.evaluate(batch_size)``.
6. ``Session.close()``.

Arrays cross this interface as NumPy: images NHWC float32, labels int64, weights in the
canonical layout of ``ModelSpec.param_shapes()`` (conv kernels HWIO, dense kernels (in, out),
flattening in NHWC order). A backend converts to its native layout inside.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from cnnbench.config import BOOLEAN_FALSE, BOOLEAN_TRUE, TrainConfig
from cnnbench.errors import BackendError as BackendError  # re-exported for plugins
from cnnbench.errors import BackendUnavailable as BackendUnavailable
from cnnbench.modes import ExecutionMode
from cnnbench.spec import LENET_LAYERS, ModelSpec

#: What a ``BackendOption`` accepts: ``bool`` (true/false, 1/0, yes/no, on/off), ``int``, ``float`` (finite),
#: ``str`` (any text), or a tuple of the allowed words.
OptionValues: TypeAlias = type[bool] | type[int] | type[float] | type[str] | tuple[str, ...]


@dataclass(frozen=True)
class BackendOption:
    """A ``--backend-option NAME.KEY=VALUE`` a backend reads, declared so that the parent rejects typos and bad values
    before any worker starts, and ``cnnbench list`` can show it."""

    #: The part after ``NAME.``, e.g. "xla" for ``tf.xla``.
    key: str
    values: OptionValues = bool
    #: What the backend does without the option (shown by ``cnnbench list``; None: it decides, see ``help``).
    default: object = None
    help: str = ""

    def __post_init__(self) -> None:
        """A malformed declaration fails when the plugin is imported (a broken plugin), not when a user types it."""
        key = self.key
        if not isinstance(key, str) or not key or any(c in key for c in ".= ") or not key.isprintable():
            raise TypeError(f"BackendOption key must be a non-empty word without '.', '=' or spaces, got {self.key!r}")
        if isinstance(self.values, tuple):
            if not self.values or not all(isinstance(choice, str) and choice for choice in self.values):
                raise TypeError(f"BackendOption {self.key}: choices must be non-empty strings, got {self.values!r}")
        elif self.values not in (bool, int, float, str):
            raise TypeError(f"BackendOption {self.key}: values must be bool, int, float, str or a tuple of choices")
        if not isinstance(self.help, str):
            raise TypeError(f"BackendOption {self.key}: help must be a string")

    def parse(self, value: str) -> str:
        """The canonical text of ``value`` (what ``TrainConfig.option`` then returns); ValueError naming what fits."""
        text = value.strip()
        lowered = text.lower()
        if isinstance(self.values, tuple):
            found = next((choice for choice in self.values if choice.lower() == lowered), None)
            if found is None:
                raise ValueError(f"expected one of {', '.join(self.values)}")
            return found
        if self.values is bool:
            if lowered in BOOLEAN_TRUE or lowered in BOOLEAN_FALSE:
                return "true" if lowered in BOOLEAN_TRUE else "false"
            raise ValueError("expected true or false (also 1/0, yes/no, on/off)")
        if self.values is int:
            try:
                return str(int(text))
            except ValueError:
                raise ValueError("expected an integer") from None
        if self.values is float:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return repr(number)
        return text

    def describe_values(self) -> str:
        """The accepted values in a few words, for listings and error messages."""
        if isinstance(self.values, tuple):
            return " | ".join(self.values)
        return {bool: "true | false", int: "integer", float: "number"}.get(self.values, "text")

    def describe_default(self) -> str:
        """The default as a listing shows it."""
        if self.default is None:
            return "-"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def check_data(x: np.ndarray, y: np.ndarray, which: str) -> None:
    """Images [n, H, W, C] and labels [n]: what ``load_data`` refuses before any backend sees it."""
    if np.ndim(x) != 4 or np.ndim(y) != 1 or len(x) != len(y):
        raise BackendError(
            f"load_data: {which} images must be [n, H, W, C] and labels [n], got shapes {np.shape(x)} and {np.shape(y)}"
        )


def checked_batch_indices(batch_indices: np.ndarray, n_train: int | None) -> np.ndarray:
    """``batch_indices`` as a contiguous int64 [n_batches, batch_size] array of valid rows, else a BackendError."""
    if n_train is None:
        raise BackendError("train_batches called before load_data")
    rows = np.asarray(batch_indices)
    if rows.dtype.kind not in "iu":
        raise BackendError(f"batch_indices must be integers, got dtype {rows.dtype}")
    if rows.ndim != 2:
        raise BackendError(f"batch_indices must be 2-D [n_batches, batch_size], got shape {rows.shape}")
    if rows.size == 0:
        raise BackendError(f"batch_indices is empty (shape {rows.shape}): at least one row of at least one index")
    low, high = int(rows.min()), int(rows.max())
    if low < 0 or high >= n_train:
        raise BackendError(
            f"batch_indices out of range: {low if low < 0 else high} is not in [0, {n_train}), "
            "the training set given to load_data"
        )
    return np.ascontiguousarray(rows, dtype=np.int64)


class Session(ABC):
    """One model and its optimizer on one device, with the data already there.

    ``load_data`` and ``train_batches`` are templates: they check their input once, the same way
    for every backend, then call the backend's ``_load_data`` and ``_train_batches``.
    """

    #: Human-readable device the session runs on, e.g. "cpu" or "cuda:0 (NVIDIA H200)".
    device: str = "cpu"
    #: Training images loaded (None before ``load_data``): the range ``train_batches`` accepts.
    _n_train: int | None = None

    def load_data(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
        """Check the shapes, hand the arrays to ``_load_data`` and remember the training-set size."""
        check_data(x_train, y_train, "training")
        check_data(x_test, y_test, "test")
        self._load_data(x_train, y_train, x_test, y_test)
        self._n_train = len(y_train)

    @abstractmethod
    def _load_data(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
        """Move the whole dataset into framework tensors on the device, once, outside the clock.

        ``x_*`` are float32 NHWC, ``y_*`` int64 class indices. Keep them resident: feeding
        must not dominate the measurement.
        """

    def train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        """Refuse bad indices (dtype, 2-D, empty, out of range) as every backend does, then ``_train_batches``."""
        return self._train_batches(checked_batch_indices(batch_indices, self._n_train))

    @abstractmethod
    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        """Run one optimizer step per row of ``batch_indices`` (int64, [n_batches, batch_size], checked).

        Row ``i`` holds the indices into the training set of the i-th batch, in the order given.
        Dropout is active; batch normalisation uses the batch's statistics and updates its moving
        statistics once per step (``cnnbench.spec.BatchNorm``). Returns the mean training loss of
        each batch as a float array of length ``n_batches`` (a backend may accumulate losses on the
        device and fetch them once at the end).
        """

    @abstractmethod
    def evaluate(self, batch_size: int) -> tuple[float, float]:
        """Mean cross-entropy and accuracy (0..1) on the whole test set, dropout inactive, batch norm on its moving
        statistics."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32, [n, num_classes]) for float32 NHWC ``x``, in inference mode (as ``evaluate``)."""

    @abstractmethod
    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy on (x, y) and its gradients in the canonical layout.

        Dropout inactive, batch norm on the batch's statistics as in training, weights and moving statistics
        unchanged: used by the parity check. Gradients of the trainable weights only (``spec.trainable_shapes()``).
        """

    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """The current weights in the canonical layout (float32 NumPy copies), batch-norm moving statistics included."""

    @abstractmethod
    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load canonical-layout weights, batch-norm moving statistics included (and reset the optimizer state)."""

    def sync(self) -> None:  # noqa: B027 (optional hook: a synchronous CPU backend has nothing to wait for)
        """Block until all queued device work is done. The harness calls it before reading the clock."""

    def peak_device_memory_mb(self) -> float | None:
        """Peak accelerator memory this session allocated (MiB), or None on CPU / when unknown."""
        return None

    def settings(self) -> dict[str, Any]:
        """The settings that matter for speed (threads, precision, JIT, layout...): the fairness manifest."""
        return {}

    def close(self) -> None:  # noqa: B027 (optional hook: most sessions hold nothing to release)
        """Release device memory and threads."""


def model_unsupported_reason(backend: Backend, spec: ModelSpec) -> str | None:
    """Why ``backend`` cannot build ``spec`` (layer types it does not declare in ``layers``), or None. No import."""
    declared = getattr(backend, "layers", LENET_LAYERS)
    missing = sorted(spec.layer_types() - frozenset(declared))
    if not missing:
        return None
    return f"{backend.name} does not implement {', '.join(missing)} (needed by model {spec.name!r})"


class Backend(ABC):
    """A framework implementation of the spec, registered by a plugin through ``register_backends``."""

    #: What ``--frameworks`` takes, e.g. "torch".
    name: str = ""
    #: Human name of the framework, e.g. "PyTorch".
    framework: str = ""
    #: Optional variants, selected as ``name:variant`` (e.g. Keras engines). The first is the default.
    variants: tuple[str, ...] = ()
    #: Whether two runs with the same seed give bit-identical results on CPU.
    deterministic: bool = False
    #: The ``--backend-option NAME.KEY=VALUE`` switches this backend reads; any other key is an error.
    options: tuple[BackendOption, ...] = ()
    #: Execution modes (``-f name:mode``, ``--modes all``), each standing for some of ``options``; see cnnbench.modes.
    modes: tuple[ExecutionMode, ...] = ()
    #: The spec layer types this backend implements, by class name (``cnnbench.spec.LAYER_TYPES``). A model with
    #: any other is unavailable on it, with the missing types as the reason (``model_unsupported_reason``).
    layers: frozenset[str] = LENET_LAYERS

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when the framework can be used; otherwise why not. Must not import the framework."""

    @abstractmethod
    def framework_version(self, variant: str | None = None) -> str:
        """The installed framework version (may read package metadata; must not import it)."""

    def process_environment(self, variant: str | None, config: TrainConfig) -> dict[str, str]:
        """Environment variables for the worker process, set before anything is imported."""
        return {}

    def import_framework(self, variant: str | None = None) -> None:  # noqa: B027 (optional: pure-Python backends)
        """Import the framework. The harness times this call as the import phase."""

    def devices_unsupported_reason(self, variant: str | None, config: TrainConfig) -> str | None:
        """None when this backend can train on ``config.devices`` devices per host (and the hosts of
        ``cnnbench.distributed.cluster()``); otherwise why not, shown as an "unsupported" row.

        Called in the parent: must not import the framework. A backend that supports more than
        one device trains data-parallel through its framework's own engine; its session receives
        global-batch index rows and takes its replicas' share (``cnnbench.distributed``).
        """
        from cnnbench import distributed

        if not distributed.is_data_parallel(config):
            return None
        return f"the {self.name} backend has no data-parallel implementation"

    def worker_launcher(self, variant: str | None, config: TrainConfig) -> list[str]:
        """``python`` arguments placed before ``-m cnnbench.worker REQUEST`` to start the worker under
        a process launcher (e.g. ``-m torch.distributed.run --nproc-per-node 2 ...``: one worker
        per device; only local rank 0 sends events). Empty: one plain worker process."""
        return []

    @abstractmethod
    def create_session(self, spec: ModelSpec, config: TrainConfig, variant: str | None = None) -> Session:
        """Build the model from ``spec`` and its optimizer from ``config`` on ``config.device``.

        Honour ``config.threads`` (intra-op threads), ``config.seed`` and ``config.dropout``
        through the spec. ``config.device`` is "auto", "cpu" or "cuda"; raise
        ``BackendUnavailable`` when the device cannot be used.
        """


def distribution_version(*names: str) -> str | None:
    """The version of the first installed distribution among ``names``, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def missing_module_reason(*modules: str, extra: str | None = None, hint: str | None = None) -> str | None:
    """``"<module> is not installed (<how to install>)"`` for the first module that cannot be found, else None.

    The fix in parentheses: ``hint`` as given (a third-party plugin: ``"pip install paddlepaddle"``),
    else ``pip install 'cnnbench[<extra>]'`` (only the built-in backends have cnnbench extras),
    else ``pip install <module>``.
    """
    import importlib.util

    if extra is not None and hint is not None:
        raise TypeError("missing_module_reason takes extra= (a cnnbench extra) or hint=, not both")
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            fix = hint if hint is not None else f"pip install 'cnnbench[{extra}]'" if extra else f"pip install {module}"
            return f"{module} is not installed ({fix})"
    return None
