"""The parent side of a run: one worker process per backend and repeat, results kept as they come.

A crash, a hang past the timeout, an out-of-memory kill or a diverged loss becomes a row with
its status and reason; the other backends still run. The result file is rewritten atomically
after every backend, so an interrupted run keeps everything that finished.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from cnnbench import allocator, distributed, environment, messages, results
from cnnbench.backend import model_unsupported_reason
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import ExitCode, UsageError
from cnnbench.modes import BackendTarget, parse_targets
from cnnbench.plugins import Registry
from cnnbench.results import (
    FAILED,
    INTERRUPTED,
    OK,
    TIMEOUT,
    UNAVAILABLE,
    UNSUPPORTED,
    BackendResult,
    Measurement,
    RunResult,
)
from cnnbench.timing import clock
from cnnbench.worker import WORKER_CWD_ENV

#: What ``--allocator`` takes (see ``cnnbench.allocator``).
ALLOCATORS = allocator.CHOICES
#: Lines of a failed worker's log kept in the result.
LOG_TAIL_LINES = 30


def parse_frameworks(text: str, registry: Registry, modes: str = "default") -> list[BackendTarget]:
    """``all`` or a comma list of ``name[:variant][+mode]``; unknown names are a UsageError (``cnnbench.modes``)."""
    return parse_targets(text, registry, modes)


class RunObserver:
    """Hooks the CLI uses for progress; every method is optional."""

    def backend_started(self, target: BackendTarget, repeat: int, repeats: int) -> None: ...
    def phase(self, target: BackendTarget, name: str) -> None: ...
    def progress(self, target: BackendTarget, epoch: int, done: int, total: int) -> None: ...
    def backend_finished(self, result: BackendResult) -> None: ...
    def save_failed(self, problem: str, saved_to: Path | None) -> None: ...


@dataclass
class RunOptions:
    repeat: int = 1
    timeout_s: float | None = None
    target_accuracy: float | None = None
    allocator: str = "auto"
    results_dir: str | None = None
    save: bool = True
    preset: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Measure (once per machine, cached) the fp32 matmul ceiling for efficiency figures.
    measure_ceiling: bool = False
    #: Run the parity check against the float64 reference after the last repeat, in its worker.
    parity: bool = False
    #: Evaluate after every epoch (accuracy curves for plots); never counted as training time.
    evaluate_each_epoch: bool = False


def harness_environment(train: TrainConfig, allocator_choice: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Variables set equally for every backend, and the manifest entries that describe them."""
    env = {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(train.threads),
        "MKL_NUM_THREADS": str(train.threads),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    allocator_env, manifest = allocator.environment(allocator.resolve(allocator_choice))
    return {**env, **allocator_env}, {"threads_requested": train.threads, **manifest}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP during a run: a KeyboardInterrupt (so every cleanup runs) that names its signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(_stop_signal_name(signum))
        self.signum = signum
        #: The row of the backend it stopped, with the repeats that finished (set by ``measure_backend``).
        self.row: BackendResult | None = None
        #: Its model and preprocessing records, when a repeat of it finished.
        self.records: dict[str, Any] = {}


def _stop_signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; Ctrl-C for SIGINT, the way users send it."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


#: What CI cancellation, Slurm, ``timeout`` and a closed terminal send: each stops a run as Ctrl-C does.
STOP_SIGNALS: tuple[int, ...] = tuple(
    int(sig) for sig in (getattr(signal, name, None) for name in ("SIGINT", "SIGTERM", "SIGHUP")) if sig is not None
)


class _StopSignals:
    """While installed, the first stop signal raises ``Interrupted`` in the main thread; later ones are ignored."""

    def __init__(self) -> None:
        self.depth = 0
        self.held_depth = 0
        self.received: int | None = None
        self.pending = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # already stopping: the cleanup (kill workers, save) must finish
        self.received = signum
        if self.held_depth:
            self.pending = True  # raised when the held section ends
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the stop signals whose action is the default one (an ignored SIGHUP under nohup stays ignored)."""
        outermost = self.depth == 0
        if outermost:
            self.received, self.pending, self.previous = None, False, {}
            if threading.current_thread() is threading.main_thread():
                for sig in STOP_SIGNALS:
                    current = signal.getsignal(sig)
                    if current in (signal.SIG_DFL, signal.default_int_handler):
                        self.previous[sig] = current
                        signal.signal(sig, self._handle)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if outermost:
                self.held_depth += 1  # a signal now is recorded, not raised half-way through the restore
                try:
                    for sig, handler in self.previous.items():
                        signal.signal(sig, handler)
                    self.previous = {}
                finally:
                    self.held_depth -= 1
                    self.pending = False

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A few lines a stop signal must not cut (a worker started but not yet known); it is raised after them."""
        self.held_depth += 1
        try:
            yield
        finally:
            self.held_depth -= 1
            if not self.held_depth and self.pending and self.received is not None:
                self.pending = False
                raise Interrupted(self.received)


_STOP = _StopSignals()


def _signal_name(code: int) -> str:
    """SIGKILL for -9: a negative return code names the signal that ended the worker."""
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


#: Set in every Python child: the current directory never goes on its ``sys.path`` (Python 3.11+).
SAFE_PATH_ENV = "PYTHONSAFEPATH"


def safe_child_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Python child that a ``cnnbench`` folder in the current directory cannot shadow."""
    safe = {**env, SAFE_PATH_ENV: "1"}
    try:
        safe[WORKER_CWD_ENV] = os.getcwd()
    except OSError:  # the directory was removed under us: the worker stays in its neutral one
        safe.pop(WORKER_CWD_ENV, None)
    return safe


def run_worker(
    request: messages.Request,
    env: dict[str, str],
    timeout_s: float | None,
    on_event: Callable[[messages.Phase | messages.Progress | messages.FollowUpCheck], None] | None,
    log_path: Path,
    launcher: list[str] | None = None,
    on_final: Callable[[messages.Final], None] | None = None,
) -> tuple[str, messages.Final]:
    """Run one worker job (measure or check); returns (status, final event), never raising for its faults.

    ``on_final`` sees the final event as it arrives, so a stop during a measure job's follow-up check keeps
    the result; once the result is in, a timeout or crash in the follow-up still returns it as OK.
    """
    # ``launcher``: ``python`` arguments of a process launcher (torchrun) that starts one worker per
    # device; the first one on this host sends the events, and a dead rank ends the whole group.
    # The worker starts in its request folder, not the user's directory: ``python -m`` puts the starting
    # directory first on sys.path (before 3.11's PYTHONSAFEPATH), and torchrun's ranks inherit both.
    expected = messages.Result if isinstance(request, messages.MeasureRequest) else messages.CheckResult
    proc: subprocess.Popen[str] | None = None
    tmp: str | None = None
    try:
        with _STOP.held():  # made and removed whole, whenever a stop signal comes
            tmp = tempfile.mkdtemp(prefix="cnnbench-")
        request_path = Path(tmp) / "request.json"
        request_path.write_text(messages.encode_request(request))
        with open(log_path, "w") as log:
            with _STOP.held():  # a stop signal waits until the worker exists and can be killed
                proc = subprocess.Popen(
                    [sys.executable, *(launcher or []), "-m", "cnnbench.worker", str(request_path)],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    env=safe_child_environment(env),
                    text=True,
                    start_new_session=True,
                    cwd=tmp,
                )
            lines: queue.Queue[str | None] = queue.Queue()
            stdout = proc.stdout
            assert stdout is not None

            def pump() -> None:
                for line in stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            deadline = clock() + timeout_s if timeout_s else None
            final: messages.Final | None = None
            while True:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - clock()))
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    if deadline is not None and clock() >= deadline:
                        kill_worker(proc)
                        if isinstance(final, expected):  # the job's result is in; only a follow-up was cut
                            return OK, final
                        return TIMEOUT, messages.Error(f"no result after {timeout_s:g} s (timeout); worker killed")
                    continue
                if line is None:
                    break
                try:
                    event = messages.decode(line)
                except messages.NotAMessage:
                    continue  # stray output of a launcher on the shared stdout
                except messages.ProtocolError as exc:  # e.g. a worker of another cnnbench version
                    kill_worker(proc)
                    return FAILED, messages.Error(str(exc))
                if isinstance(event, messages.FINAL_KINDS):
                    if final is None:  # the job's outcome; a worker dying in a follow-up may still report an error
                        final = event
                        if on_final is not None:
                            on_final(event)
                elif on_event is not None:
                    on_event(event)
            code = proc.wait()
    except BaseException:
        if proc is not None:
            kill_worker(proc)
        raise
    finally:
        if tmp is not None:
            with _STOP.held():
                shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(final, expected):
        return OK, final
    if isinstance(final, messages.Unavailable):
        return UNAVAILABLE, final
    if isinstance(final, (messages.Result, messages.CheckResult)):
        return FAILED, messages.Error(f"a {request.job} job answered with a {final.kind!r} event")
    # Under a launcher, the reporting rank's error is often only "a peer went away": name the rank that died.
    reporting_error = final.reason if final else None
    launcher_failure = distributed.describe_launcher_failure(_read_log(log_path), reporting_error) if launcher else None
    if launcher_failure:
        return FAILED, messages.Error(launcher_failure, peak_rss_mb=final.peak_rss_mb if final else None)
    if final:
        return FAILED, final
    if code < 0:
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        return FAILED, messages.Error(f"worker killed by {_signal_name(code)}{hint}")
    return FAILED, messages.Error(f"worker exited with code {code} without a result: {last_log_line(log_path)}")


def kill_worker(proc: subprocess.Popen[Any]) -> None:
    """Kill a worker and everything it started; never raises."""
    # Launchers such as torchrun start each rank in a session of its own: kill them by pid too.
    for child in _descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, also those in sessions of their own (torchrun's ranks)."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _read_log(path: Path) -> str:
    """The whole worker log, or nothing: a missing log must not hide the failure it would explain."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def last_log_line(path: Path) -> str:
    """The last non-empty line of a worker log: the one-line reason of a failure."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else "(no output)"


def base_row(target: BackendTarget, registry: Registry) -> BackendResult:
    """A row that names the backend, its framework version and plugin, before anything is measured."""
    registered = registry.backend(target.name)
    backend = registered.item
    return BackendResult(
        backend=target.id,
        framework=backend.framework,
        framework_version=backend.framework_version(target.variant),
        plugin=f"{registered.plugin.name} ({registered.plugin.distribution} {registered.plugin.version})".strip(),
    )


def interrupted_reason(signum: int) -> str:
    """The reason of a row a stop signal cut: who sent what."""
    if signum == signal.SIGINT:
        return "interrupted by the user (Ctrl-C)"
    return f"interrupted by {_stop_signal_name(signum)}"


class WorkerLogs:
    """Worker logs in a temporary folder; a failed repeat's log is kept (its reason names it), the folder removed."""

    def __init__(self, run_id: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cnnbench-logs-"))
        self.kept_folder = _cache_root() / "logs" / run_id
        self.stays = False  # a failed log that could not be moved stays in the temporary folder, so does the folder

    def path(self, target: BackendTarget, repeat: int) -> Path:
        """Where the worker of this backend and repeat writes its stderr."""
        return self.folder / f"{target.id.replace(':', '-')}-{repeat}.log"

    def keep(self, log: Path) -> Path:
        """Move a failed repeat's log where it outlives the run; where it was if that fails."""
        if not log.exists():
            return log  # the worker never got to write one: nothing to keep
        try:
            self.kept_folder.mkdir(parents=True, exist_ok=True)
            kept = self.kept_folder / log.name
            shutil.move(str(log), kept)
        except OSError:
            self.stays = True
            return log
        return kept

    def close(self) -> None:
        """Remove the temporary folder unless a failed row's reason points into it."""
        if not self.stays:
            shutil.rmtree(self.folder, ignore_errors=True)


def _cache_root() -> Path:
    """The cnnbench cache folder ($CNNBENCH_CACHE_DIR or the platform's), for kept logs and unsaved results."""
    from cnnbench.datasets.locate import cache_root

    return cache_root()


def measure_backend(
    target: BackendTarget,
    registry: Registry,
    train: TrainConfig,
    data: DataConfig,
    options: RunOptions,
    observer: RunObserver,
    logs: WorkerLogs,
) -> tuple[BackendResult, dict[str, Any]]:
    """All repeats of one backend. Returns its row and the model/preprocessing records.

    A stop signal leaves as ``Interrupted`` carrying the row with the repeats that finished.
    """
    backend = registry.backend(target.name).item
    train = target.configure(train)  # the row's execution mode, as backend options
    row = base_row(target, registry)
    reason = backend.unavailable_reason()
    if reason:
        return replace(row, status=UNAVAILABLE, reason=reason), {}
    reason = backend.devices_unsupported_reason(target.variant, train)
    if reason:
        return replace(row, status=UNSUPPORTED, reason=reason), {}
    dataset = registry.dataset(data.dataset).item
    spec = registry.spec(train.model, dataset.input_shape, dataset.num_classes, train.dropout)
    reason = model_unsupported_reason(backend, spec)
    if reason:
        return replace(row, status=UNSUPPORTED, reason=reason), {}
    env_base, manifest = harness_environment(train, options.allocator)
    manifest.update(target.manifest(train, backend))
    env = {**os.environ, **env_base, **backend.process_environment(target.variant, train), **options.extra_env}
    request = messages.MeasureRequest(
        target.name,
        target.variant,
        train,
        data,
        options.target_accuracy,
        evaluate_each_epoch=options.evaluate_each_epoch,
    )
    measurements: list[Measurement] = []
    records: dict[str, Any] = {}
    taken: list[messages.Final] = []  # the final event of the repeat under way, as soon as it arrives
    reports: list[dict[str, Any]] = []  # the follow-up check's report of the repeat under way

    def take(status: str, final: messages.Final, log_path: Path) -> Measurement:
        """One repeat's measurement from its worker's final event; the row learns the backend's device and settings."""
        nonlocal row, records
        if isinstance(final, messages.Result):
            row = replace(
                row, device=final.device, parameters=final.parameters, settings={**manifest, **final.settings}
            )
            records = {"model": final.model, "preprocessing": final.preprocessing}
            return final.measurement
        error = final if isinstance(final, messages.Error) else messages.Error(f"unexpected {final.kind!r} event")
        measurement = Measurement(status=status, reason=error.reason, peak_rss_mb=error.peak_rss_mb)
        if status == FAILED:
            measurement = replace(measurement, reason=f"{measurement.reason} (log: {logs.keep(log_path)})")
        return measurement

    try:
        for repeat in range(1, options.repeat + 1):
            observer.backend_started(target, repeat, options.repeat)
            log_path = logs.path(target, repeat)
            # The parity check follows the last repeat's result in the same worker: no second process or import,
            # and every measured repeat ran before it (docs/performance.md#wall-time).
            follow_up = options.parity and repeat == options.repeat
            job = replace(request, then_check=check_request(target, registry, train, data) if follow_up else None)
            reports.clear()
            taken.clear()

            def on_event(event: messages.Phase | messages.Progress | messages.FollowUpCheck) -> None:
                if isinstance(event, messages.FollowUpCheck):
                    reports.append(event.report)
                elif isinstance(event, messages.Progress):
                    observer.progress(target, event.epoch, event.done, event.total)
                else:
                    observer.phase(target, event.name)

            launcher = backend.worker_launcher(target.variant, train)  # per repeat: a fresh rendezvous port
            status, final = run_worker(job, env, options.timeout_s, on_event, log_path, launcher, taken.append)
            taken.clear()
            if isinstance(final, messages.Unavailable):
                return replace(row, status=UNAVAILABLE, reason=final.reason), {}
            measurements.append(take(status, final, log_path))
            if follow_up:
                parity: dict[str, Any] | messages.Unavailable | None = parity_outcome(reports, final, log_path, logs)
                if parity is None:  # the worker failed before its result: the check in a worker of its own
                    parity = parity_job(target, registry, train, data, env, options, observer, logs)
                if isinstance(parity, messages.Unavailable):
                    return replace(row, status=UNAVAILABLE, reason=parity.reason), {}
                row = replace(row, parity=parity)
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        why = interrupted_reason(stop.signum)
        if taken and isinstance(taken[-1], messages.Result):  # stopped during the follow-up check: keep the result
            measurements.append(take(OK, taken[-1], log_path))
        cut = Measurement(status=INTERRUPTED, reason=why)
        stop.row = replace(row, repeats=(*measurements, cut), status=INTERRUPTED, reason=why)
        stop.records = records
        raise stop from None
    failed = next((m for m in measurements if m.status != OK), None)
    row = replace(
        row, repeats=tuple(measurements), status=failed.status if failed else OK, reason=failed.reason if failed else ""
    )
    return row, records


def check_request(
    target: BackendTarget, registry: Registry, train: TrainConfig, data: DataConfig
) -> messages.CheckRequest:
    """The run's parity column: ``cnnbench check``'s job for this row's optimizer, learning rate, seed and init."""
    from cnnbench.conformance.data import DEFAULT_BATCH, DEFAULT_STEPS

    dataset = registry.dataset(data.dataset).item
    return messages.CheckRequest(
        target.name,
        target.variant,
        replace(train, devices=1),
        tuple(dataset.input_shape),
        dataset.num_classes,
        train.dropout,
        {train.optimizer: train.learning_rate},
        train.seed,
        DEFAULT_STEPS,
        train.init,
        DEFAULT_BATCH,
        probes=False,  # the probes build sessions of their own: 'cnnbench check' runs them, a run's column does not
        tell_forms_apart=False,  # PASS or FAIL is the column's question; 'cnnbench check' names Adam's epsilon form
    )


def parity_outcome(
    reports: list[dict[str, Any]], final: messages.Final, log_path: Path, logs: WorkerLogs
) -> dict[str, Any] | None:
    """The follow-up check's report; a FAIL when the worker sent its result but not the report; None without result."""
    if reports:
        return reports[-1]
    if not isinstance(final, messages.Result):
        return None
    why = last_log_line(log_path)
    return {
        "status": "FAIL",
        "message": f"the parity check did not finish: the worker ended after its result ({why}; log: "
        f"{logs.keep(log_path)})",
        "checks": {},
    }


def parity_job(
    target: BackendTarget,
    registry: Registry,
    train: TrainConfig,
    data: DataConfig,
    env: dict[str, str],
    options: RunOptions,
    observer: RunObserver,
    logs: WorkerLogs,
) -> dict[str, Any] | messages.Unavailable:
    """The parity column in a worker of its own: when the last repeat's worker failed before its result."""
    request = check_request(target, registry, train, data)
    observer.phase(target, "parity check")
    log_path = logs.path(target, 0)
    started = clock()
    status, final = run_worker(request, env, options.timeout_s, None, log_path)
    seconds = clock() - started
    if isinstance(final, messages.Unavailable):
        return final
    if isinstance(final, messages.CheckResult):
        return {**final.report, "seconds": seconds}
    reason = final.reason if isinstance(final, messages.Error) else f"unexpected {final.kind!r} event"
    if status == FAILED:
        reason = f"{reason} (log: {logs.keep(log_path)})"
    return {"status": "FAIL", "message": f"the parity check did not finish: {reason}", "checks": {}, "seconds": seconds}


def fallback_folder(index: int) -> Path | None:
    """Where results go once their folder fails mid-run: 0 the user cache, 1 a private folder in the temp dir."""
    if index == 0:
        return _cache_root() / "unsaved-results"
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"cnnbench-unsaved-results-{uid if uid is not None else 'user'}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    if not folder.is_dir() or folder.is_symlink() or (uid is not None and info.st_uid != uid):
        return None  # a shared temp folder: never write into someone else's
    return folder


class ResultSaver:
    """Saves the run after every backend; when the asked folder fails mid-run, the run goes on in a named fallback."""

    def __init__(self, directory: str | os.PathLike[str] | None, enabled: bool, observer: RunObserver) -> None:
        self.directory, self.enabled, self.observer = directory, enabled, observer
        self.path: Path | None = None
        #: Why the asked folder failed (None while it works); the run's exit code says "not saved".
        self.problem: str | None = None
        self.fallback = -1  # -1: the asked folder; 0, 1 ...: ``fallback_folder(index)``

    def save(self, result: RunResult) -> Path | None:
        """Write the run where it goes now; never raises for a folder that fails (the observer is told)."""
        if not self.enabled:
            return None
        while True:
            if self.fallback > 1:
                self.observer.save_failed(self.problem or "cannot write results", None)
                self.fallback = 1  # try the last one again at the next save
                self.path = None
                return None
            # None as the asked folder is the default store; as a fallback, one that is not safe to use
            folder = self.directory if self.fallback < 0 else fallback_folder(self.fallback)
            try:
                if folder is None and self.fallback >= 0:
                    raise UsageError("the temporary folder's fallback is not this user's own")
                saved = results.save(result, folder, filename=self.path.name if self.path else None)
            except UsageError as exc:
                self.problem = self.problem or str(exc)
                self.fallback += 1
                continue
            if self.problem is not None and (self.path is None or self.path.parent != saved.parent):
                self._drop_partial_copy(saved)
                self.observer.save_failed(self.problem, saved)
            self.path = saved
            return saved

    def _drop_partial_copy(self, saved: Path) -> None:
        """The asked folder's copy misses the later backends: the whole run is now in ``saved``, say it once."""
        if self.path is not None and self.path != saved:
            with contextlib.suppress(OSError):
                self.path.unlink()


def above_ceiling(result: RunResult, entry: dict[str, Any]) -> list[str]:
    """OK rows whose achieved GFLOP/s (spec FLOPs x median train samples/s) beat the ceiling ``entry``."""
    from cnnbench import ceiling

    flops = result.model.get("flops_train_per_sample")
    beaten = []
    for row in result.backends:
        if row.status == OK:
            achieved, _ = ceiling.efficiency(flops, row.median("train_throughput"), None)
            if not ceiling.plausible(entry, achieved):
                beaten.append(row.backend)
    return beaten


def check_ceiling(result: RunResult, threads: int) -> RunResult:
    """A beaten ceiling was measured on a busy machine: measure it once more; flag rows that still beat it."""
    from cnnbench import ceiling

    entry = result.environment.get("matmul_ceiling")
    if not isinstance(entry, dict) or not above_ceiling(result, entry):
        return result
    fresh = ceiling.ceiling(threads, refresh=True)
    entry = {**fresh, "remeasured": True} if fresh else dict(entry)
    beaten = above_ceiling(result, entry)
    if beaten:
        entry["above_ceiling"] = beaten
    return replace(result, environment={**result.environment, "matmul_ceiling": entry})


def run_benchmark(
    targets: list[BackendTarget],
    registry: Registry,
    train: TrainConfig,
    data: DataConfig,
    options: RunOptions | None = None,
    observer: RunObserver | None = None,
) -> tuple[RunResult, Path | None]:
    """Measure every target; save after each. A stop signal saves what finished, marks it, raises RunInterrupted.

    Ctrl-C, SIGTERM and SIGHUP all stop the run this way (handlers installed here, restored after);
    an unusable results folder is a UsageError before anything is measured.
    """
    options = options or RunOptions()
    observer = observer or RunObserver()
    threads = train.threads or os.cpu_count() or 1
    train = replace(train, threads=threads).validate()
    data.validate()
    dataset = registry.dataset(data.dataset).item
    registry.spec(train.model, dataset.input_shape, dataset.num_classes, train.dropout)  # a bad --model: one line
    if options.save:
        problem = results.writable_folder_error(options.results_dir)
        if problem:
            raise UsageError(problem)
    result = RunResult(
        run_id=results.new_run_id(),
        created=results.now_iso(),
        train=train,
        data=data,
        environment=environment.collect(),
        preset=options.preset,
        repeat=options.repeat,
    )
    saver = ResultSaver(options.results_dir, options.save, observer)
    with _STOP.installed():
        with _STOP.held():
            logs = WorkerLogs(result.run_id)
        current: BackendTarget | None = None
        try:
            if options.measure_ceiling:
                from cnnbench import ceiling

                measured = ceiling.ceiling(threads)
                if measured:
                    result = replace(result, environment={**result.environment, "matmul_ceiling": measured})
            for target in targets:
                current = target
                row, records = measure_backend(target, registry, train, data, options, observer, logs)
                result = _with_row(result, row, records)
                current = None
                observer.backend_finished(row)
                saver.save(result)
            if options.measure_ceiling:
                checked = check_ceiling(result, threads)
                if checked is not result:
                    result = checked
                    saver.save(result)
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
            with _STOP.held():  # later signals are ignored: what finished is saved whatever comes next
                if current is not None and result.backend(current.id) is None:
                    row = exc.row if isinstance(exc, Interrupted) and exc.row else _cut_row(current, registry, signum)
                    result = _with_row(result, row, exc.records if isinstance(exc, Interrupted) else {})
                    observer.backend_finished(row)
                result = replace(result, interrupted=True)
                if result.backends:
                    saver.save(result)
            raise RunInterrupted(result, saver.path, signum, saver.problem) from None
        finally:
            logs.close()
    if _STOP.received is not None:  # came while the handlers were restored: all is saved, but stop as asked
        raise RunInterrupted(result, saver.path, _STOP.received, saver.problem)
    return result, saver.path


def _with_row(result: RunResult, row: BackendResult, records: dict[str, Any]) -> RunResult:
    """``result`` with one more row; the first model and preprocessing records are the run's."""
    if records:
        result = replace(
            result,
            model=result.model or records["model"],
            preprocessing=result.preprocessing or records["preprocessing"],
        )
    return replace(result, backends=(*result.backends, row))


def _cut_row(target: BackendTarget, registry: Registry, signum: int) -> BackendResult:
    """The row of a backend stopped before its worker reported anything; still names its framework version."""
    why = interrupted_reason(signum)
    try:
        row = base_row(target, registry)
    except Exception:  # noqa: BLE001 - a plugin's version lookup must not lose the run being saved
        row = BackendResult(backend=target.id)
    return replace(row, status=INTERRUPTED, reason=why)


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C, SIGTERM or SIGHUP; carries what finished, where it was saved, and the signal."""

    def __init__(
        self, result: RunResult, path: Path | None, signum: int = signal.SIGINT, save_problem: str | None = None
    ) -> None:
        super().__init__(f"interrupted by {_stop_signal_name(signum)}")
        self.result, self.path, self.signum, self.save_problem = result, path, signum, save_problem

    @property
    def signal_name(self) -> str:
        """``SIGTERM``, ``SIGHUP``, or ``Ctrl-C``."""
        return _stop_signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        """128 + the signal, the shell's convention (130 for Ctrl-C)."""
        return ExitCode.for_signal(self.signum)
