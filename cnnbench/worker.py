"""The child process that runs one job: ``python -m cnnbench.worker REQUEST.json``.

One fresh interpreter per backend and repeat, so frameworks never share threads, allocators or
device memory, and a crash is confined here. The job (measure a backend, or check it against the
reference) and the events it sends back are the typed messages of ``cnnbench.messages``, one JSON
line each on the original stdout; anything a framework prints is redirected to stderr (the log).
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import sys
import traceback
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from cnnbench import messages
from cnnbench.messages import CheckRequest, MeasureRequest

if TYPE_CHECKING:
    from cnnbench.plugins import Registry

#: The directory the user ran cnnbench in; the runner starts workers elsewhere so it cannot shadow cnnbench.
WORKER_CWD_ENV = "CNNBENCH_WORKER_CWD"


class EventStream:
    """Typed events to the parent, one line each, over a private copy of the original stdout."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def emit(self, event: messages.Event) -> None:
        """Write and flush at once: the parent shows progress and keeps the last event if we die."""
        self.stream.write(messages.encode(event) + "\n")
        self.stream.flush()


def _take_over_stdout() -> EventStream:
    """Keep fd 1 for events only: frameworks print to stdout, which would corrupt the stream."""
    from cnnbench.distributed import is_reporting_process

    events_fd = os.dup(1)
    os.dup2(2, 1)  # framework chatter on fd 1 now lands in the log (stderr)
    sys.stdout = sys.stderr
    if not is_reporting_process():  # another rank of a data-parallel group on this host: silent
        os.close(events_fd)
        return EventStream(open(os.devnull, "w"))
    return EventStream(os.fdopen(events_fd, "w", buffering=1))


def peak_rss_mb() -> float:
    """Peak resident memory (MiB) since the last ``reset_peak_rss`` (Linux VmHWM), else since start."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Restart the peak-memory high-water mark (Linux >= 4.0): import and build are not training's memory."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def measure(request: MeasureRequest, events: EventStream) -> int:
    """Build, train and evaluate one backend; ends with a ``Result`` event, then the ``then_check`` if asked."""
    # Imports that may be slow or fail stay inside, so failures become events.
    from cnnbench import distributed, preprocess, timing
    from cnnbench.conformance.threads import measure_threads
    from cnnbench.initializers import initial_weights
    from cnnbench.plugins import load_registry
    from cnnbench.results import OK, Measurement, Phases
    from cnnbench.spec import is_state

    start = timing.clock()
    registry = load_registry()
    backend = registry.backend(request.backend).item
    dataset = registry.dataset(request.data.dataset).item
    data = preprocess.prepare(dataset.load(request.data), request.data)
    spec = registry.spec(request.train.model, dataset.input_shape, dataset.num_classes, request.train.dropout)

    events.emit(messages.Phase("import"))
    t = timing.clock()
    backend.import_framework(request.variant)
    import_s = timing.clock() - t

    events.emit(messages.Phase("build"))
    t = timing.clock()
    session = backend.create_session(spec, request.train, request.variant)
    weights = initial_weights(spec, request.train.init, request.train.seed)
    if weights is not None:
        session.set_weights(weights)
    session.sync()
    build_s = timing.clock() - t
    parameters = int(sum(w.size for name, w in session.get_weights().items() if not is_state(name)))

    gc.collect()
    reset_peak_rss()

    events.emit(messages.Phase("load_data"))
    t = timing.clock()
    session.load_data(data.x_train, data.y_train, data.x_test, data.y_test)
    session.sync()
    load_data_s = timing.clock() - t

    events.emit(messages.Phase("train", device=session.device))
    # Data-parallel: the timing protocol draws global batches (per-device batch x replicas); each
    # session takes its replicas' share of every row, so the batch order stays the harness's.
    where = distributed.cluster()
    global_batch = distributed.global_batch_size(request.train, where)
    with measure_threads() as threads:  # CPU time / wall time: the threads used, beside those requested
        outcome = timing.measure(
            session,
            data,
            replace(request.train, batch_size=global_batch),
            progress=lambda epoch, done, total: events.emit(messages.Progress(epoch, done, total)),
            target_accuracy=request.target_accuracy,
            evaluate_each_epoch=request.evaluate_each_epoch,
        )
    measurement = Measurement(
        status=outcome.status,
        reason=outcome.reason,
        epochs=tuple(outcome.epochs),
        phases=Phases(
            import_s=import_s,
            build_s=build_s,
            load_data_s=load_data_s,
            first_epoch_s=outcome.first_epoch_s,
            train_s=outcome.train_s,
            eval_s=outcome.eval_s,
            eval_warmup_s=outcome.eval_warmup_s,
            total_s=timing.clock() - start,
        ),
        train_throughput=outcome.train_throughput,
        train_throughput_samples=tuple(outcome.train_throughput_samples),
        eval_throughput=outcome.eval_throughput,
        test_accuracy=outcome.test_accuracy,
        test_loss=outcome.test_loss,
        peak_rss_mb=peak_rss_mb(),
        peak_device_memory_mb=session.peak_device_memory_mb(),
        time_to_accuracy_s=outcome.time_to_accuracy_s,
    )
    settings = {
        **session.settings(),
        "devices_per_host": request.train.devices,
        "hosts": where.num_hosts,
        "global_batch": global_batch,
        "threads_requested": request.train.threads,
        "threads_used": None if threads.used is None else round(threads.used, 1),
    }
    model = {
        "name": spec.name,
        "digest": spec.digest(),
        "parameters": spec.num_params,
        "state": spec.num_state,
        "flops_train_per_sample": spec.flops_train,
        "input_shape": list(spec.input_shape),
    }
    events.emit(messages.Result(measurement, session.device, parameters, settings, model, data.record))
    session.close()
    if request.then_check is not None:
        del session
        gc.collect()
        follow_up_check(request.then_check, registry, events)
    return 0 if outcome.status == OK else 3


def check(request: CheckRequest, events: EventStream) -> int:
    """Run ``parity.check_backend`` on one backend in fresh sessions; ends with a ``CheckResult`` event."""
    from cnnbench import conformance as parity
    from cnnbench import timing
    from cnnbench.errors import BackendUnavailable
    from cnnbench.plugins import load_registry

    started = timing.clock()
    registry = load_registry()
    backend = registry.backend(request.backend).item
    reason = backend.unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)
    events.emit(messages.Phase("import"))
    backend.import_framework(request.variant)
    report = check_report(request, registry, events)
    report["elapsed_s"] = timing.clock() - started
    events.emit(messages.CheckResult(report))
    return 0 if report["status"] == parity.PASS else 3


def check_report(request: CheckRequest, registry: Registry, events: EventStream) -> dict[str, Any]:
    """The parity report of ``request``'s backend, whose framework is imported; ``seconds``: the check's own time."""
    from cnnbench import conformance as parity
    from cnnbench import elementwise, timing

    started = timing.clock()
    elementwise.set_threads(request.train.threads)  # the reference's big-array arithmetic keeps to --threads
    backend = registry.backend(request.backend).item
    spec = registry.spec(request.train.model, request.input_shape, request.num_classes, request.dropout)
    events.emit(messages.Phase("parity check"))
    report = parity.check_backend(
        backend,
        spec,
        request.train,
        request.variant,
        request.learning_rates,
        request.seed,
        request.steps,
        request.init,
        request.batch,
        probes=request.probes,
        tell_forms_apart=request.tell_forms_apart,
    )
    report.update(spec=spec.name, digest=spec.digest(), input_shape=list(spec.input_shape))
    report["seconds"] = timing.clock() - started
    return report


def follow_up_check(request: CheckRequest, registry: Registry, events: EventStream) -> None:
    """A measure job's ``then_check``, after its ``Result``: every failure becomes a FAIL report, never an exit."""
    from cnnbench import timing

    started = timing.clock()
    try:
        report = check_report(request, registry, events)
    except Exception as exc:  # noqa: BLE001 - the measurement is sent; the check's failure is its column's
        traceback.print_exc(file=sys.stderr)
        reason = _failure(exc)
        text = reason.reason if isinstance(reason, (messages.Error, messages.Unavailable)) else str(exc)
        report = {
            "status": "FAIL",
            "message": f"the parity check did not finish: {text}",
            "checks": {},
            "seconds": timing.clock() - started,
        }
    events.emit(messages.FollowUpCheck(report))


def run(request: messages.Request, events: EventStream) -> int:
    """Do the requested job; the exit code is 0 for a clean result (the parent reads the events)."""
    if isinstance(request, CheckRequest):
        return check(request, events)
    return measure(request, events)


def _failure(exc: BaseException) -> messages.Final:
    """The event that reports an exception: ``Unavailable`` for a missing framework, else ``Error``."""
    from cnnbench.errors import BackendUnavailable

    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, BackendUnavailable):
        return messages.Unavailable(message, peak_rss_mb=peak_rss_mb())
    return messages.Error(f"{type(exc).__name__}: {message}", peak_rss_mb=peak_rss_mb())


def _return_to_user_directory() -> None:
    """Back to the user's directory, so relative paths in the request and environment mean what they meant."""
    # sys.path kept no entry for it (a neutral start directory, PYTHONSAFEPATH): a ``cnnbench`` folder there
    # cannot shadow the package, and later imports cannot find modules there either.
    where = os.environ.get(WORKER_CWD_ENV)
    if where:
        with contextlib.suppress(OSError):
            os.chdir(where)


def main(argv: list[str] | None = None) -> int:
    """Read the request file named on the command line, run it, report everything as events."""
    argv = sys.argv[1:] if argv is None else argv
    _return_to_user_directory()
    events = _take_over_stdout()
    try:
        if len(argv) != 1:
            raise messages.ProtocolError("usage: python -m cnnbench.worker REQUEST.json")
        with open(argv[0]) as handle:
            request = messages.decode_request(handle.read())
        return run(request, events)
    except BaseException as exc:  # noqa: BLE001 - report everything, then die with a non-zero code
        traceback.print_exc(file=sys.stderr)
        events.emit(_failure(exc))
        return 130 if isinstance(exc, KeyboardInterrupt) else 1


def alone() -> bool:
    """One process doing the whole job: no launcher's ranks or other hosts that a shutdown must reach."""
    from cnnbench.distributed import LOCAL_RANK_ENV, cluster
    from cnnbench.errors import UsageError

    try:
        return LOCAL_RANK_ENV not in os.environ and not cluster().multi_host
    except UsageError:
        return False


def leave(code: int) -> None:
    """Exit once everything is sent, without the frameworks' interpreter teardown (0.3-1.4 s that a run waits for)."""
    if alone():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):  # a closed or missing stream has nothing left to say
                stream.flush()  # type: ignore[union-attr]
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    leave(main())
