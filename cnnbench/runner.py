"""The parent side of a run: one worker process per backend and repeat, results kept as they come.

A crash, a hang past the timeout, an out-of-memory kill or a diverged loss becomes a row with
its status and reason; the other backends still run. The result file is rewritten atomically
after every backend, so an interrupted run keeps everything that finished.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnbench import distributed, environment, messages, results
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.errors import UsageError
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

#: Where Debian's libtcmalloc-minimal4 puts the allocator the notes measured (+40% for JAX).
TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
ALLOCATORS = ("auto", "system", "tcmalloc")
#: Lines of a failed worker's log kept in the result.
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class BackendTarget:
    """One row of a run: a backend name and, where it has variants, which one."""

    name: str
    variant: str | None = None

    @property
    def id(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name


def parse_frameworks(text: str, registry: Registry) -> list[BackendTarget]:
    """``all`` or a comma list of ``name`` / ``name:variant``; unknown names are a UsageError."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise UsageError("no framework given; valid: " + ", ".join(sorted(registry.backends)) + ", all")
    targets: list[BackendTarget] = []
    for item in items:
        if item == "all":
            for name in sorted(registry.backends):
                backend = registry.backends[name].item
                targets.append(BackendTarget(name, backend.variants[0] if backend.variants else None))
            continue
        name, _, variant = item.partition(":")
        backend = registry.backend(name).item
        variants = tuple(backend.variants)
        if variant and variant not in variants:
            valid = ", ".join(variants) if variants else "none"
            raise UsageError(f"unknown variant {variant!r} of framework {name!r}; valid: {valid}")
        targets.append(BackendTarget(name, variant or (variants[0] if variants else None)))
    unique: list[BackendTarget] = []
    for target in targets:
        if target not in unique:
            unique.append(target)
    return unique


class RunObserver:
    """Hooks the CLI uses for progress; every method is optional."""

    def backend_started(self, target: BackendTarget, repeat: int, repeats: int) -> None: ...
    def phase(self, target: BackendTarget, name: str) -> None: ...
    def progress(self, target: BackendTarget, epoch: int, done: int, total: int) -> None: ...
    def backend_finished(self, result: BackendResult) -> None: ...


def find_tcmalloc() -> str | None:
    """The tcmalloc library the harness preloads when present (faster allocation for every framework)."""
    return next((path for path in TCMALLOC_CANDIDATES if os.path.exists(path)), None)


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
    #: Run the parity check against the float64 reference before training (first repeat only).
    parity: bool = False
    #: Evaluate after every epoch (accuracy curves for plots); never counted as training time.
    evaluate_each_epoch: bool = False


def harness_environment(train: TrainConfig, allocator: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Variables set equally for every backend, and the manifest entries that describe them."""
    env = {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(train.threads),
        "MKL_NUM_THREADS": str(train.threads),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    manifest: dict[str, Any] = {"threads_requested": train.threads}
    if allocator not in ALLOCATORS:
        raise UsageError(f"unknown allocator {allocator!r}; choose from: {', '.join(ALLOCATORS)}")
    tcmalloc = find_tcmalloc()
    if allocator == "tcmalloc" and not tcmalloc:
        raise UsageError(
            "tcmalloc requested but libtcmalloc_minimal.so.4 was not found (apt-get install libtcmalloc-minimal4)"
        )
    if allocator in ("auto", "tcmalloc") and tcmalloc:
        env["LD_PRELOAD"] = tcmalloc
        manifest["allocator"] = f"tcmalloc ({tcmalloc})"
    else:
        manifest["allocator"] = "system (glibc malloc)"
    return env, manifest


def _signal_name(code: int) -> str:
    """SIGKILL for -9: a negative return code names the signal that ended the worker."""
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_worker(
    request: messages.Request,
    env: dict[str, str],
    timeout_s: float | None,
    on_event: Callable[[messages.Phase | messages.Progress], None] | None,
    log_path: Path,
    launcher: list[str] | None = None,
) -> tuple[str, messages.Final]:
    """Run one worker job (measure or check); returns (status, final event), never raising for its faults."""
    # ``launcher``: ``python`` arguments of a process launcher (torchrun) that starts one worker per
    # device; the first one on this host sends the events, and a dead rank ends the whole group.
    expected = messages.Result if isinstance(request, messages.MeasureRequest) else messages.CheckResult
    with tempfile.TemporaryDirectory(prefix="cnnbench-") as tmp:
        request_path = Path(tmp) / "request.json"
        request_path.write_text(messages.encode_request(request))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, *(launcher or []), "-m", "cnnbench.worker", str(request_path)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env, text=True,
                start_new_session=True,
            )
            lines: queue.Queue[str | None] = queue.Queue()

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            deadline = clock() + timeout_s if timeout_s else None
            final: messages.Final | None = None
            try:
                while True:
                    wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - clock()))
                    try:
                        line = lines.get(timeout=wait)
                    except queue.Empty:
                        if deadline is not None and clock() >= deadline:
                            kill_worker(proc)
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
                        final = event
                    elif on_event is not None:
                        on_event(event)
                code = proc.wait()
            except BaseException:
                kill_worker(proc)
                raise
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
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
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


def measure_backend(
    target: BackendTarget, registry: Registry, train: TrainConfig, data: DataConfig, options: RunOptions,
    observer: RunObserver, log_dir: Path,
) -> tuple[BackendResult, dict[str, Any]]:
    """All repeats of one backend. Returns its row and the model/preprocessing records."""
    registered = registry.backend(target.name)
    backend = registered.item
    row = BackendResult(
        backend=target.id,
        framework=backend.framework,
        framework_version=backend.framework_version(target.variant),
        plugin=f"{registered.plugin.name} ({registered.plugin.distribution} {registered.plugin.version})".strip(),
    )
    reason = backend.unavailable_reason()
    if reason:
        return replace(row, status=UNAVAILABLE, reason=reason), {}
    reason = backend.devices_unsupported_reason(target.variant, train)
    if reason:
        return replace(row, status=UNSUPPORTED, reason=reason), {}
    env_base, manifest = harness_environment(train, options.allocator)
    env = {**os.environ, **env_base, **backend.process_environment(target.variant, train), **options.extra_env}
    request = messages.MeasureRequest(
        target.name, target.variant, train, data, options.target_accuracy,
        parity=options.parity, evaluate_each_epoch=options.evaluate_each_epoch,
    )
    measurements: list[Measurement] = []
    records: dict[str, Any] = {}
    for repeat in range(1, options.repeat + 1):
        observer.backend_started(target, repeat, options.repeat)
        log_path = log_dir / f"{target.id.replace(':', '-')}-{repeat}.log"

        def on_event(event: messages.Phase | messages.Progress) -> None:
            if isinstance(event, messages.Progress):
                observer.progress(target, event.epoch, event.done, event.total)
            else:
                observer.phase(target, event.name)

        launcher = backend.worker_launcher(target.variant, train)  # per repeat: a fresh rendezvous port
        if repeat > 1 and row.parity:  # the check is about the code, not the run: once per backend
            request = replace(request, parity=False)
        status, final = run_worker(request, env, options.timeout_s, on_event, log_path, launcher)
        if isinstance(final, messages.Unavailable):
            return replace(row, status=UNAVAILABLE, reason=final.reason), {}
        if isinstance(final, messages.Result):
            measurement = final.measurement
            row = replace(row, device=final.device, parameters=final.parameters,
                          settings={**manifest, **final.settings}, parity=row.parity or final.parity)
            records = {"model": final.model, "preprocessing": final.preprocessing}
        else:
            error = final if isinstance(final, messages.Error) else messages.Error(f"unexpected {final.kind!r} event")
            measurement = Measurement(status=status, reason=error.reason, peak_rss_mb=error.peak_rss_mb)
            if status == FAILED:
                measurement = replace(measurement, reason=f"{measurement.reason} (log: {log_path})")
        measurements.append(measurement)
    failed = next((m for m in measurements if m.status != OK), None)
    row = replace(row, repeats=tuple(measurements), status=failed.status if failed else OK,
                  reason=failed.reason if failed else "")
    return row, records


def run_benchmark(
    targets: list[BackendTarget], registry: Registry, train: TrainConfig, data: DataConfig,
    options: RunOptions | None = None, observer: RunObserver | None = None,
) -> tuple[RunResult, Path | None]:
    """Measure every target; save after each. Ctrl-C saves what finished, marks it, and re-raises."""
    options = options or RunOptions()
    observer = observer or RunObserver()
    threads = train.threads or os.cpu_count() or 1
    train = replace(train, threads=threads).validate()
    data.validate()
    result = RunResult(run_id=results.new_run_id(), created=results.now_iso(), train=train, data=data,
                       environment=environment.collect(), preset=options.preset, repeat=options.repeat)
    if options.measure_ceiling:
        from cnnbench import ceiling

        measured = ceiling.ceiling(threads)
        if measured:
            result = replace(result, environment={**result.environment, "matmul_ceiling": measured})
    path: Path | None = None
    log_dir = Path(tempfile.mkdtemp(prefix="cnnbench-logs-"))

    def save(current: RunResult) -> Path | None:
        if not options.save:
            return None
        return results.save(current, options.results_dir, filename=path.name if path else None)

    for target in targets:
        try:
            row, records = measure_backend(target, registry, train, data, options, observer, log_dir)
        except KeyboardInterrupt:
            interrupted = BackendResult(backend=target.id, status=INTERRUPTED,
                                        reason="interrupted by the user (Ctrl-C)")
            result = replace(result, backends=result.backends + (interrupted,), interrupted=True)
            path = save(result)
            raise RunInterrupted(result, path) from None
        if records:
            result = replace(result, model=result.model or records["model"],
                             preprocessing=result.preprocessing or records["preprocessing"])
        result = replace(result, backends=result.backends + (row,))
        observer.backend_finished(row)
        path = save(result)
    return result, path


class RunInterrupted(Exception):
    """Ctrl-C during a run; carries what finished and where it was saved."""

    def __init__(self, result: RunResult, path: Path | None):
        super().__init__("interrupted")
        self.result, self.path = result, path
