"""Result records: plain frozen data, saved as versioned JSON, loaded back into the same objects.

A run holds one ``BackendResult`` per framework; each holds one ``Measurement`` per repeat
(a fresh process each). Summaries (medians over repeats) are derived, never stored twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnbench import stats
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import UsageError

SCHEMA_VERSION = 1
RESULTS_DIR_ENV = "CNNBENCH_RESULTS_DIR"

#: Status values of a measurement / backend row.
OK, FAILED, TIMEOUT, DIVERGED, INTERRUPTED, UNAVAILABLE = "ok", "failed", "timeout", "diverged", "interrupted", "unavailable"
#: The backend cannot run what was asked (e.g. data-parallel on an engine without it); the reason says why.
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    seconds: float
    samples: int
    samples_per_s: float
    #: Set when the run evaluates after every epoch (time-to-accuracy, plots).
    test_accuracy: float | None = None


@dataclass(frozen=True)
class Phases:
    """Wall-clock seconds of each phase, each read after a device sync."""

    import_s: float | None = None
    build_s: float | None = None
    load_data_s: float | None = None
    first_epoch_s: float | None = None
    train_s: float | None = None
    eval_s: float | None = None
    total_s: float | None = None


@dataclass(frozen=True)
class Measurement:
    """One repeat of one backend, measured in a fresh process."""

    status: str = OK
    reason: str = ""
    epochs: tuple[EpochRecord, ...] = ()
    phases: Phases = field(default_factory=Phases)
    #: Steady-state training samples/s: median over epochs after the first, or, with one
    #: epoch, the batches after the warm-up steps.
    train_throughput: float | None = None
    #: Per-epoch (or post-warm-up) samples/s the steady-state figure is the median of.
    train_throughput_samples: tuple[float, ...] = ()
    eval_throughput: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    peak_rss_mb: float | None = None
    peak_device_memory_mb: float | None = None
    #: Training seconds (evaluation excluded) until the target accuracy was first reached.
    time_to_accuracy_s: float | None = None


@dataclass(frozen=True)
class BackendResult:
    backend: str
    framework: str = ""
    framework_version: str = ""
    plugin: str = ""
    device: str = ""
    parameters: int | None = None
    status: str = OK
    reason: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    repeats: tuple[Measurement, ...] = ()
    #: Filled by the parity check: {"status": "PASS"|"FAIL"|"not checked", ...}.
    parity: dict[str, Any] = field(default_factory=dict)

    def ok_repeats(self) -> list[Measurement]:
        return [m for m in self.repeats if m.status == OK]

    def median(self, metric: str) -> float | None:
        """Median over successful repeats of a ``Measurement`` field or phase (e.g. ``first_epoch_s``)."""
        values = [metric_value(m, metric) for m in self.ok_repeats()]
        return stats.median([v for v in values if v is not None])

    def values(self, metric: str) -> list[float]:
        return [v for v in (metric_value(m, metric) for m in self.ok_repeats()) if v is not None]


def metric_value(measurement: Measurement, metric: str) -> float | None:
    if hasattr(measurement.phases, metric):
        return getattr(measurement.phases, metric)
    return getattr(measurement, metric)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    created: str
    train: TrainConfig
    data: DataConfig
    backends: tuple[BackendResult, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    #: How the harness prepared the data (scaling, split, limits, sizes): identical for all backends.
    preprocessing: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    repeat: int = 1
    #: True when the run was cut short (Ctrl-C): the file holds what finished.
    interrupted: bool = False
    schema_version: int = SCHEMA_VERSION

    def backend(self, name: str) -> BackendResult | None:
        return next((b for b in self.backends if b.backend == name), None)


# --- JSON round trip -------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_type, v) for v in value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a result dataclass from JSON data; unknown keys (newer minor fields) are ignored."""
    if not isinstance(data, dict):
        raise TypeError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data}
    return cls(**kwargs)


def dumps(result: RunResult) -> str:
    return json.dumps(to_dict(result), indent=2, allow_nan=True)


def loads(text: str, source: str = "<string>") -> RunResult:
    """Parse a result; every problem is a ``UsageError`` naming ``source``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise UsageError(f"{source}: not a cnnbench result (no schema_version)")
    version = data["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise UsageError(f"{source}: schema version {version!r} is not supported (this cnnbench reads 1..{SCHEMA_VERSION}; upgrade cnnbench)")
    try:
        return from_dict(RunResult, data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UsageError(f"{source}: malformed result ({exc})") from None


def load(path: str | os.PathLike) -> RunResult:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read result file {path}: {exc.strerror or exc}") from None
    return loads(text, str(path))


def results_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The result store: ``--results-dir``, ``$CNNBENCH_RESULTS_DIR``, or ``./results``."""
    return Path(explicit or os.environ.get(RESULTS_DIR_ENV) or "results")


def new_run_id() -> str:
    """Sortable by time; the random suffix keeps two runs started in the same second apart."""
    import secrets

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_filename(result: RunResult) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40] or "host"
    return f"{result.run_id}_{host}.json"


def save(result: RunResult, directory: str | os.PathLike | None = None, filename: str | None = None) -> Path:
    """Write atomically (temporary file in the same folder, then rename): never a half file."""
    folder = results_dir(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (filename or default_filename(result))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as handle:
            handle.write(dumps(result))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a result file is for sharing
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write results to {folder}: {exc.strerror or exc}") from None
    return path


def resolve(name: str, directory: str | os.PathLike | None = None) -> Path:
    """A result given as a path, a file name in the store, or ``latest`` / ``latest~N``."""
    path = Path(name)
    if path.is_file():
        return path
    folder = results_dir(directory)
    files = sorted(f for f in folder.glob("*.json") if f.name[:1].isdigit())  # run files, oldest first
    if name.startswith("latest"):
        back = int(name.partition("~")[2] or 0) if name.partition("~")[2].isdigit() or name == "latest" else -1
        if back < 0 or back >= len(files):
            raise UsageError(f"{name}: no such result in {folder} ({len(files)} stored)")
        return files[-1 - back]
    for candidate in (folder / name, folder / f"{name}.json"):
        if candidate.is_file():
            return candidate
    matches = [f for f in files if f.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    raise UsageError(f"{name}: no such result file (looked in . and {folder})")
