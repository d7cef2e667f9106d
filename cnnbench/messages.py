"""The runner-worker message protocol: typed requests and events, one JSON object per line.

The parent writes one request (a job: measure a backend, or check it against the reference) to a
file and starts ``python -m cnnbench.worker FILE``; the worker answers with event lines on its
private stdout: any number of ``Phase`` and ``Progress``, then one final event (``Result``,
``CheckResult``, ``Error`` or ``Unavailable``); a measure job with ``then_check`` follows its ``Result``
with the check's ``Phase`` and one ``FollowUpCheck``. Every request and line carries
``PROTOCOL_VERSION``, so a worker from another cnnbench installation becomes a clear failure row.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from cnnbench import results
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.results import Measurement

#: Bumped whenever a request or event changes shape; both sides must speak the same version.
PROTOCOL_VERSION = 4

#: The JSON keys of the envelope (never a field name of a request or event).
VERSION_KEY, EVENT_KEY, JOB_KEY = "version", "event", "job"


class ProtocolError(ValueError):
    """A request or event this cnnbench cannot read: another protocol version, an unknown kind, bad fields."""


class NotAMessage(ProtocolError):
    """A line that is not a message at all (stray output of a launcher); the runner skips such lines."""


# --- requests: what the parent asks one worker process to do ---------------------------------


@dataclass(frozen=True)
class CheckRequest:
    """Compare one backend with the float64 reference (``parity.check_backend``): the job of ``check``."""

    job: ClassVar[str] = "check"
    backend: str
    variant: str | None
    train: TrainConfig
    input_shape: tuple[int, int, int]
    num_classes: int
    dropout: float | None
    #: Optimizer -> learning rate of the step checks.
    learning_rates: dict[str, float]
    seed: int
    steps: int
    init: str
    batch: int
    #: Also the probes that need sessions of their own (optimizer reset, Adam's hyper-parameters, dropout):
    #: ``cnnbench check`` runs them; a run's parity column leaves them out (docs/performance.md#wall-time).
    probes: bool = True
    #: Judge every Adam epsilon form and name the one followed; False stops at the first that passes (a run's column).
    tell_forms_apart: bool = True


@dataclass(frozen=True)
class MeasureRequest:
    """Train and time one backend, one repeat: the job of ``run`` and ``scale``."""

    job: ClassVar[str] = "measure"
    backend: str
    variant: str | None
    train: TrainConfig
    data: DataConfig
    target_accuracy: float | None = None
    #: Evaluate after every epoch (accuracy curves); never counted as training time.
    evaluate_each_epoch: bool = False
    #: A check to run in the same process once the ``Result`` is sent (a run's parity column): the framework is
    #: imported and warm by then, and the measurement is already safe if the check fails, hangs or crashes.
    then_check: CheckRequest | None = None


Request = MeasureRequest | CheckRequest
JOBS: dict[str, type[MeasureRequest | CheckRequest]] = {cls.job: cls for cls in (MeasureRequest, CheckRequest)}


# --- events: what a worker reports back, one per line ------------------------------------------


@dataclass(frozen=True)
class Phase:
    """The worker entered a phase (import, build, train...): drives the progress display."""

    kind: ClassVar[str] = "phase"
    name: str
    device: str = ""


@dataclass(frozen=True)
class Progress:
    """Batches done of an epoch, after each chunk of ``train_batches``."""

    kind: ClassVar[str] = "progress"
    epoch: int
    done: int
    total: int


@dataclass(frozen=True)
class Result:
    """A measure job's outcome: one repeat's measurement and what the row records about the backend."""

    kind: ClassVar[str] = "result"
    measurement: Measurement
    device: str
    parameters: int
    settings: dict[str, Any] = field(default_factory=dict)
    #: The model spec's description and the harness's preprocessing record, the same for every backend.
    model: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """A check job's outcome: the parity report (status PASS or FAIL, message, checks by name...)."""

    kind: ClassVar[str] = "check_result"
    report: dict[str, Any]


@dataclass(frozen=True)
class FollowUpCheck:
    """The report of a measure job's ``then_check``, sent after its ``Result`` (not a final event)."""

    kind: ClassVar[str] = "follow_up_check"
    report: dict[str, Any]


@dataclass(frozen=True)
class Error:
    """The job raised: a one-line reason (the traceback is in the worker's log)."""

    kind: ClassVar[str] = "error"
    reason: str
    peak_rss_mb: float | None = None


@dataclass(frozen=True)
class Unavailable:
    """The backend's framework cannot be used here (``BackendUnavailable``); not a failure of the code."""

    kind: ClassVar[str] = "unavailable"
    reason: str
    peak_rss_mb: float | None = None


Event = Phase | Progress | FollowUpCheck | Result | CheckResult | Error | Unavailable
#: The events that end a job; a worker sends exactly one, last.
Final = Result | CheckResult | Error | Unavailable
FINAL_KINDS = (Result, CheckResult, Error, Unavailable)
EVENTS: dict[str, type[Any]] = {cls.kind: cls for cls in (Phase, Progress, FollowUpCheck, *FINAL_KINDS)}

T = TypeVar("T")


# --- serialisation -----------------------------------------------------------------------------


def _fields(obj: Any) -> dict[str, Any]:
    """Top-level fields; nested dataclasses (configs, the measurement) through ``results.to_dict``."""
    return {f.name: results.to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def encode(event: Event) -> str:
    """One line of JSON (no newline) carrying the protocol version and the event's kind."""
    return json.dumps({VERSION_KEY: PROTOCOL_VERSION, EVENT_KEY: event.kind, **_fields(event)}, default=str)


def encode_request(request: Request) -> str:
    """The request file's text."""
    return json.dumps({VERSION_KEY: PROTOCOL_VERSION, JOB_KEY: request.job, **_fields(request)}, default=str)


def _check_version(raw: dict[str, Any], what: str) -> None:
    version = raw.pop(VERSION_KEY, None)
    if version is None:
        raise ProtocolError(
            f"{what} carries no protocol version (from an older cnnbench?); this cnnbench speaks {PROTOCOL_VERSION}"
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what} speaks message protocol version {version!r}, this cnnbench speaks {PROTOCOL_VERSION} "
            "(the worker runs another cnnbench installation?)"
        )


def from_dict(cls: type[T], data: dict[str, Any], what: str = "") -> T:
    """Build a request or event from its fields; missing or malformed fields are a ``ProtocolError``."""
    try:
        built: T = results.from_dict(cls, data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ProtocolError(f"malformed {what or cls.__name__}: {exc}") from None
    return built


def decode(line: str) -> Event:
    """The event on one line; ``NotAMessage`` for stray output, ``ProtocolError`` for what cannot be read."""
    try:
        raw = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise NotAMessage(f"not a message (no JSON): {line.strip()[:80]!r}") from None
    if not isinstance(raw, dict) or EVENT_KEY not in raw:
        raise NotAMessage(f"not a message (no {EVENT_KEY!r} key): {line.strip()[:80]!r}")
    kind = raw.pop(EVENT_KEY)
    _check_version(raw, f"worker message {kind!r}")
    cls = EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown worker message kind {kind!r}; this cnnbench knows: {', '.join(EVENTS)}")
    event: Event = from_dict(cls, raw, f"{kind!r} message")
    return event


def decode_request(text: str) -> Request:
    """The request in a request file's text; every problem is a ``ProtocolError``."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"worker request is not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"worker request is not a JSON object but {type(raw).__name__}")
    _check_version(raw, "worker request")
    job = raw.pop(JOB_KEY, None)
    cls = JOBS.get(job) if isinstance(job, str) else None
    if cls is None:
        raise ProtocolError(f"unknown worker job {job!r}; this cnnbench knows: {', '.join(JOBS)}")
    request: Request = from_dict(cls, raw, f"{job!r} request")
    return request
