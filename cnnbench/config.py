"""What a run is asked to do, as plain frozen data that crosses the process boundary as JSON.

Validation lives here so the CLI, presets and the Python API reject the same bad values with
the same one-line messages.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from cnnbench.errors import UsageError

OPTIMIZERS = ("adam", "sgd")
#: Weight-init schemes. ``glorot-uniform``: glorot-uniform kernels, zero biases (Keras' default).
#: ``normal``: the chapter's TF code, kernels N(0, 0.1^2) and biases N(0, 1).
#: ``framework``: each framework's own default initialisers (they differ; not comparable).
INIT_SCHEMES = ("glorot-uniform", "normal", "framework")
DEVICES = ("auto", "cpu", "cuda")
#: Adam hyper-parameters every backend uses, so that optimizers match across frameworks
#: (Keras defaults to epsilon 1e-7, PyTorch and optax to 1e-8: the harness picks one).
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
#: Seeds are 0 <= seed < 2**32: NumPy's legacy seeding refuses more, and JAX's 32-bit keys wrap 2**32 to 0.
SEED_LIMIT = 2**32
#: How a boolean backend option may be spelled (``BackendOption`` stores "true" / "false").
BOOLEAN_TRUE, BOOLEAN_FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and protocol settings shared by every backend in a run."""

    #: The registered model (``cnnbench list``): the chapter's LeNet unless ``--model`` names another.
    model: str = "lenet"
    optimizer: str = "adam"
    learning_rate: float = 0.001
    batch_size: int = 100
    epochs: int = 1
    seed: int = 0
    init: str = "glorot-uniform"
    #: Dropout rate; None takes the spec's default for the dataset (0.2 for colour inputs).
    dropout: float | None = None
    #: Threads per framework (intra-op); None means all cores of the machine.
    threads: int | None = None
    #: Batches excluded from steady-state throughput when only one epoch is run.
    warmup_steps: int = 10
    eval_batch_size: int = 1000
    #: One untimed pass over the test set before the timed one: evaluation throughput is a steady state,
    #: like training's (the first pass's tracing, compiling and first-touch memory are reported apart).
    eval_warmup: bool = True
    device: str = "auto"
    #: Data-parallel devices (replicas) per host; the global batch is ``batch_size`` x devices x hosts
    #: (see ``cnnbench.distributed``). 1 = the single-device path.
    devices: int = 1
    #: Backend-specific switches, "backend.key" -> value (e.g. "tf.xla": "true"); recorded in results.
    backend_options: dict[str, str] = field(default_factory=dict)

    def option(self, backend: str, key: str, default: str | None = None) -> str | None:
        """The value of ``--backend-option backend.key=value``, or ``default``."""
        return self.backend_options.get(f"{backend}.{key}", default)

    def flag(self, backend: str, key: str, default: bool = False) -> bool:
        """A boolean backend option: 1/true/yes/on are true, 0/false/no/off false; anything else is refused."""
        value = self.option(backend, key)
        if value is None:
            return default
        word = value.strip().lower()
        if word not in BOOLEAN_TRUE + BOOLEAN_FALSE:
            raise UsageError(f"--backend-option {backend}.{key}={value}: expected true or false")
        return word in BOOLEAN_TRUE

    def validate(self) -> TrainConfig:
        """Every field in range, so a bad value is one line in the parent, not a failed row per backend."""
        if not isinstance(self.model, str) or not self.model:
            raise UsageError(f"model must be a registered model name, got {self.model!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)) or not (
            0 < self.learning_rate <= 10
        ):
            raise UsageError(f"learning rate must be a number in (0, 10], got {self.learning_rate!r}")
        if self.epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {self.epochs}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise UsageError(f"seed must be an integer in 0..{SEED_LIMIT - 1} (2**32 - 1), got {self.seed!r}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise UsageError(f"eval batch size must be at least 1, got {self.eval_batch_size}")
        if self.init not in INIT_SCHEMES:
            raise UsageError(f"unknown init scheme {self.init!r}; choose from: {', '.join(INIT_SCHEMES)}")
        if self.dropout is not None and not (0 <= self.dropout < 1):
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
        if self.warmup_steps < 0:
            raise UsageError(f"warm-up steps must be 0 or more, got {self.warmup_steps}")
        if not isinstance(self.devices, int) or self.devices < 1:
            raise UsageError(f"devices must be at least 1, got {self.devices!r}")
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}; choose from: {', '.join(DEVICES)}")
        return self


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how the harness prepares it (the same arrays for every backend)."""

    dataset: str = "mnist"
    data_dir: str | None = None
    #: Images held out of training (seeded), e.g. 5,000 for the chapter's MNIST run.
    validation: int = 0
    #: Use only the first N (seeded, stratified) training / test images; None = all.
    limit_train: int | None = None
    limit_test: int | None = None
    #: Per-channel standardisation with the training set's mean and std (after scaling to [0, 1]).
    standardize: bool = False
    offline: bool = False
    #: Extra dataset-specific options (e.g. size of the synthetic set).
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> DataConfig:
        """Limits and hold-out in range; whether they fit the dataset is ``check_sizes``' job (it needs the sizes)."""
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if self.validation < 0:
            raise UsageError(f"validation must be 0 or more, got {self.validation}")
        return self


def check_sizes(train: TrainConfig, data: DataConfig, n_train: int, replicas: int = 1) -> None:
    """Refuse a hold-out or a batch the training set cannot give, before any worker starts (else: a failed row each).

    ``n_train`` is the dataset's training images; ``replicas`` the data-parallel replicas (global batch =
    batch size x replicas). Mirrors ``cnnbench.preprocess.prepare``: hold-out first, then the seeded subset.
    """
    if data.validation and data.validation >= n_train:
        raise UsageError(
            f"validation hold-out {data.validation:,} leaves no training data: {data.dataset} has {n_train:,} "
            "training images"
        )
    remaining = n_train - data.validation
    usable = min(remaining, data.limit_train) if data.limit_train else remaining
    batch = train.batch_size * replicas
    if batch > usable:
        what = f"batch size {train.batch_size}" + (f" x {replicas} replicas = {batch}" if replicas > 1 else "")
        held = f" after the hold-out of {data.validation:,}" if data.validation else ""
        limited = " (--limit-train)" if data.limit_train and data.limit_train < remaining else ""
        raise UsageError(f"{what} is larger than the training set: {usable:,} images{limited}{held}")


def check_threads(threads: int | None, cores: int) -> None:
    """Refuse more threads than the cores this process may use: the run would measure contention, not the framework.

    Refused rather than capped, so that a result never records a thread count other than the one asked for.
    """
    if threads is not None and threads > cores:
        raise UsageError(
            f"threads {threads} is more than the {cores} core{'s' if cores != 1 else ''} this process may use; "
            "oversubscribed threads measure contention, not the framework"
        )


def check_timeout(timeout_s: float | None) -> None:
    """A timeout is a positive, finite number of seconds (NaN would compare false and mean no limit)."""
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UsageError(f"timeout must be positive and finite (seconds), got {timeout_s:g}; omit it for no limit")


#: The config dataclasses (what ``override`` and ``from_dict`` build).
ConfigT = TypeVar("ConfigT", TrainConfig, DataConfig)


def to_dict(obj: Any) -> dict[str, Any]:
    """A config as plain JSON-ready data."""
    return asdict(obj)


def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    """Build a config dataclass from a dict, ignoring unknown keys (older/newer files)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def override(config: ConfigT, **changes: Any) -> ConfigT:
    """``dataclasses.replace`` that ignores None values: explicit flags override presets."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def parse_key_values(pairs: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; a pair without ``=`` is a UsageError naming ``what``."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} must look like KEY=VALUE, got {pair!r}")
        parsed[key.strip()] = value.strip()
    return parsed
