"""Result records: plain frozen data, saved as versioned JSON, loaded back into the same objects.

A run holds one ``BackendResult`` per framework; each holds one ``Measurement`` per repeat
(a fresh process each). Summaries (medians over repeats) are derived, never stored twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
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
from cnnbench.errors import ResultFileError, UsageError

SCHEMA_VERSION = 1
RESULTS_DIR_ENV = "CNNBENCH_RESULTS_DIR"

#: Status values of a measurement / backend row.
OK, FAILED, TIMEOUT, DIVERGED, INTERRUPTED, UNAVAILABLE = (
    "ok",
    "failed",
    "timeout",
    "diverged",
    "interrupted",
    "unavailable",
)
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
    #: The untimed evaluation pass before ``eval_s``'s (``TrainConfig.eval_warmup``): tracing, compiling, first touch.
    eval_warmup_s: float | None = None
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
    source: Any = measurement.phases if hasattr(measurement.phases, metric) else measurement
    return typing.cast("float | None", getattr(source, metric))


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
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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


# --- validation on load ----------------------------------------------------------------------
#
# A result file is input like any other: it may come from another machine, another version, a
# hand edit or an attacker. ``loads`` checks every field against the dataclass annotations (plus
# the few free-form keys the readers use) before anything reads it, so compare, export and
# history either get well-typed objects or one ``ResultFileError`` naming the file and the field.

#: Far above any real run (a few MB at most), low enough to refuse junk before parsing it.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Real files nest about 7 levels deep; free-form settings get room, a pathological file does not.
MAX_DEPTH = 32
#: Integers beyond 2**53 are not exact in JSON readers (JavaScript) and overflow float formatting.
MAX_INT = 2**53


@dataclass(frozen=True)
class AtLeast:
    """``Annotated`` marker: the smallest value a field may hold (what readers divide by)."""

    minimum: int


#: ``Annotated`` marker: this float may be NaN or infinite (the loss of a diverged run).
NON_FINITE_OK = "non-finite ok"


class _Ceiling(typing.TypedDict, total=False):
    gflops: float | None


class _Environment(typing.TypedDict, total=False):
    """The environment keys that readers use as strings or numbers; others are free-form."""

    cpu: str | None
    cores: int | None
    os: str | None
    machine: str | None
    hostname: str | None
    python: str | None
    git_commit: str | None
    matmul_ceiling: _Ceiling | None


class _Model(typing.TypedDict, total=False):
    flops_train_per_sample: float | None


class _Preprocessing(typing.TypedDict, total=False):
    n_train: typing.Annotated[int, AtLeast(0)] | None
    n_test: typing.Annotated[int, AtLeast(0)] | None


class _Settings(typing.TypedDict, total=False):
    """Keys the harness adds to a backend's settings and the scaling report reads."""

    devices_per_host: typing.Annotated[int, AtLeast(1)]
    hosts: typing.Annotated[int, AtLeast(1)]
    global_batch: typing.Annotated[int, AtLeast(1)]
    data_parallel: str


class _Parity(typing.TypedDict, total=False):
    status: str
    message: str


#: Narrower types than the dataclass annotations say, for fields readers compute with.
FIELD_TYPES: dict[tuple[type, str], Any] = {
    (RunResult, "environment"): _Environment,
    (RunResult, "model"): _Model,
    (RunResult, "preprocessing"): _Preprocessing,
    (RunResult, "repeat"): typing.Annotated[int, AtLeast(0)],
    (BackendResult, "settings"): _Settings,
    (BackendResult, "parity"): _Parity,
    (TrainConfig, "batch_size"): typing.Annotated[int, AtLeast(1)],
    (TrainConfig, "eval_batch_size"): typing.Annotated[int, AtLeast(1)],
    (TrainConfig, "devices"): typing.Annotated[int, AtLeast(1)],
    (EpochRecord, "train_loss"): typing.Annotated[float, NON_FINITE_OK],
    (Measurement, "test_loss"): typing.Annotated[float | None, NON_FINITE_OK],
}


class _Invalid(Exception):
    """A field that does not fit the schema: where (a path like ``backends[0].repeats[1]``) and why."""

    def __init__(self, path: str, message: str, wrong_type: bool = False) -> None:
        super().__init__(f"{path or 'the top level'}: {message}")
        self.path, self.wrong_type = path, wrong_type


def _wrong_type(tp: Any, value: Any, path: str) -> _Invalid:
    return _Invalid(path, f"expected {_expected(tp)}, got {_json_type(value)}", wrong_type=True)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key.isidentifier() and key.isascii() and len(key) <= 40:
        return f"{path}.{key}" if path else key
    shown = key if len(key) <= 40 else key[:37] + "..."
    return f"{path}[{json.dumps(shown)}]"  # quoted and escaped: a key is data, never markup or control codes


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return _number_text(value)
    names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value)) or type(value).__name__


def _number_text(value: float) -> str:
    """A number as JSON spells it; a huge integer by its length (never thousands of digits in a message)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _expected(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        names = [_expected(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in typing.get_args(tp) else []))
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp) or typing.is_typeddict(tp):
        return "an object"
    kinds: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return kinds.get(tp) or str(getattr(tp, "__name__", tp))


def _check(tp: Any, value: Any, path: str, non_finite_ok: bool = False) -> None:
    """Raise ``_Invalid`` unless ``value`` (parsed JSON) fits annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(tp)
        _check(base, value, path, non_finite_ok or NON_FINITE_OK in marks)
        for mark in marks:
            if isinstance(mark, AtLeast) and value is not None and value < mark.minimum:
                raise _Invalid(path, f"must be at least {mark.minimum}, got {_number_text(value)}")
        return
    if tp is Any:
        return
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return
        for option in options:
            try:
                return _check(option, value, path, non_finite_ok)
            except _Invalid as exc:
                if len(options) == 1 and not (exc.wrong_type and exc.path == path):
                    raise  # the value has the right type; something inside it or its range is wrong
        raise _wrong_type(tp, value, path)
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            raise _wrong_type(tp, value, path)
        return
    if dataclasses.is_dataclass(tp) or typing.is_typeddict(tp):
        _check_object(tp, value, path)
    elif origin in (tuple, list):
        _check_list(tp, value, path)
    elif origin is dict:
        if not isinstance(value, dict):
            raise _wrong_type(tp, value, path)
        item_type = typing.get_args(tp)[1]
        for key, item in value.items():
            _check(item_type, item, _join(path, key))
    elif tp in (int, float):
        _check_number(tp, value, path, non_finite_ok)
    elif isinstance(tp, type) and tp in (bool, str):
        if not isinstance(value, tp):
            raise _wrong_type(tp, value, path)
    else:
        raise TypeError(f"the result schema uses {tp!r} at {path}, which the loader cannot check")


def _check_number(tp: type, value: Any, path: str, non_finite_ok: bool) -> None:
    wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int))
    if wrong:
        raise _wrong_type(tp, value, path)
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise _Invalid(path, f"integer out of range (beyond +-2**53), got {_number_text(value)}")
    if isinstance(value, float) and not math.isfinite(value) and not non_finite_ok:
        raise _Invalid(path, f"expected a finite number, got {_number_text(value)}")


def _check_list(tp: Any, value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _wrong_type(tp, value, path)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
        raise _Invalid(path, f"expected a list of {len(args)} items, got {len(value)}")
    for index, item in enumerate(value):
        item_type = args[0] if typing.get_origin(tp) is list or args[-1] is Ellipsis else args[index]
        _check(item_type, item, _join(path, index))


def _check_object(cls: Any, value: Any, path: str) -> None:
    """A dataclass or TypedDict: required fields present, known fields well typed, unknown ones ignored."""
    if not isinstance(value, dict):
        raise _wrong_type(cls, value, path)
    hints = typing.get_type_hints(cls, include_extras=True)
    if dataclasses.is_dataclass(cls):
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
    else:
        required = set(cls.__required_keys__)
    for name, hint in hints.items():
        where = _join(path, name)
        if name not in value:
            if name in required:
                raise _Invalid(where, "required field is missing")
            continue
        _check(FIELD_TYPES.get((cls, name), hint), value[name], where)


#: Where a value sits, kept as (parent link, key) pairs so a path string is only built for an error.
_Link = tuple[Any, "str | int"]


def _check_depth_and_text(data: Any) -> None:
    """Nesting depth and strings (keys included) that UTF-8 can hold, anywhere in the document."""
    stack: list[tuple[Any, int, _Link | None]] = [(data, 1, None)]
    while stack:
        value, depth, link = stack.pop()
        if isinstance(value, (dict, list)) and depth > MAX_DEPTH:
            raise _Invalid(_path_of(link), f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, (link, key))
                stack.append((item, depth + 1, (link, key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (link, index)) for index, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, link)


def _check_text(text: str, link: _Link | None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(_path_of(link), "a string holds an unpaired surrogate (\\ud800-\\udfff), not text") from None


def _path_of(link: _Link | None) -> str:
    keys: list[str | int] = []
    while link is not None:
        link, key = link
        keys.append(key)
    path = ""
    for key in reversed(keys):
        path = _join(path, key)
    return path


def loads(text: str | bytes, source: str = "<string>") -> RunResult:
    """Parse and validate a result; every problem is one ``ResultFileError`` naming ``source`` and the field."""
    if len(text) > MAX_FILE_BYTES:
        raise ResultFileError(f"{source}: larger than {MAX_FILE_BYTES // 2**20} MiB, not a cnnbench result")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            bad = f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
            raise ResultFileError(f"{source}: not UTF-8 text ({bad})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ResultFileError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ResultFileError(f"{source}: not usable JSON ({str(exc).partition(':')[0]})") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ResultFileError(f"{source}: not a cnnbench result (no schema_version)")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ResultFileError(f"{source}: schema_version: expected an integer, got {_json_type(version)}")
    if version > SCHEMA_VERSION or version < 1:
        raise ResultFileError(
            f"{source}: schema version {_number_text(version)} is not supported "
            f"(this cnnbench reads 1..{SCHEMA_VERSION}; upgrade cnnbench)"
        )
    try:
        _check_depth_and_text(data)
        _check(RunResult, data, "")
    except _Invalid as exc:
        raise ResultFileError(f"{source}: {exc}") from None
    if isinstance(data.get("train"), dict):
        data["train"].setdefault("eval_warmup", False)  # written before the warm-up pass: the first pass was timed
    return typing.cast(RunResult, from_dict(RunResult, data))


def load(path: str | os.PathLike[str]) -> RunResult:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ResultFileError(f"cannot read result file {path}: {exc.strerror or exc}") from None
    return loads(data, str(path))


def results_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
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


def _write_file(fd: int, text: str) -> None:
    """Write and flush ``text`` to the open temporary file: one place a full disk shows up (tests fail it)."""
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def writable_folder_error(directory: str | os.PathLike[str] | None = None) -> str | None:
    """Why results cannot be written to the store (created if missing), or None: checked before measuring."""
    folder = results_dir(directory)
    if folder.exists() and not folder.is_dir():
        return f"cannot write results to {folder}: not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write results to {folder}: {exc.strerror or exc}"
    return None


def save(result: RunResult, directory: str | os.PathLike[str] | None = None, filename: str | None = None) -> Path:
    """Write atomically (temporary file in the same folder, then rename): never a half file, nor a stray one."""
    folder = results_dir(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (filename or default_filename(result))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    except OSError as exc:
        raise UsageError(f"cannot write results to {folder}: {exc.strerror or exc}") from None
    try:
        _write_file(fd, dumps(result))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a result file is for sharing
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, a removed folder, Ctrl-C: no .tmp-*.json left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write results to {folder}: {exc.strerror or exc}") from None
        raise
    return path


def resolve(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """A result given as a path, a file name in the store, or ``latest`` / ``latest~N``."""
    path = Path(name)
    if path.is_file():
        return path
    _refuse_broken_link(path)
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
        _refuse_broken_link(candidate)
    matches = [f for f in files if f.name.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    raise UsageError(f"{name}: no such result file (looked in . and {folder})")


def _refuse_broken_link(path: Path) -> None:
    """A path that exists but cannot be read (symlink loop, broken link, no permission) says so: is_file hides it."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            why = "symlink loop"
        elif exc.errno == errno.ENOENT and path.is_symlink():
            why = "broken symlink"
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return  # simply not there: the caller looks elsewhere
        else:
            why = exc.strerror or str(exc)
        raise UsageError(f"{path}: cannot read result file: {why}") from None
