"""What a run is asked to do, as plain frozen data that crosses the process boundary as JSON.

Validation lives here so the CLI, presets and the Python API reject the same bad values with
the same one-line messages.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

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


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and protocol settings shared by every backend in a run."""

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
        """A boolean backend option: 1/true/yes/on are true."""
        value = self.option(backend, key)
        return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")

    def validate(self) -> "TrainConfig":
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)) or not (
            0 < self.learning_rate <= 10
        ):
            raise UsageError(f"learning rate must be a number in (0, 10], got {self.learning_rate!r}")
        if self.epochs < 1:
            raise UsageError(f"epochs must be at least 1, got {self.epochs}")
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

    def validate(self) -> "DataConfig":
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if self.validation < 0:
            raise UsageError(f"validation must be 0 or more, got {self.validation}")
        return self


def to_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)


def from_dict(cls: type, data: dict[str, Any]):
    """Build a config dataclass from a dict, ignoring unknown keys (older/newer files)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def override(config, **changes):
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
