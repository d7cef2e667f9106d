"""The child process that measures one backend: ``python -m cnnbench.worker REQUEST.json``.

One fresh interpreter per backend and repeat, so frameworks never share threads, allocators or
device memory, and a crash is confined here. Events go to the parent as JSON lines on the
original stdout; anything a framework prints is redirected to stderr (the parent's log).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TextIO

from cnnbench import config as config_mod
from cnnbench.config import DataConfig, TrainConfig


@dataclass(frozen=True)
class WorkerRequest:
    backend: str
    variant: str | None
    train: TrainConfig
    data: DataConfig
    target_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerRequest":
        raw = json.loads(text)
        return cls(
            backend=raw["backend"],
            variant=raw.get("variant"),
            train=config_mod.from_dict(TrainConfig, raw["train"]),
            data=config_mod.from_dict(DataConfig, raw["data"]),
            target_accuracy=raw.get("target_accuracy"),
            extra=raw.get("extra", {}),
        )


class EventStream:
    """JSON-lines events to the parent over a private copy of the original stdout."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def emit(self, kind: str, **payload: Any) -> None:
        self.stream.write(json.dumps({"event": kind, **payload}, default=str) + "\n")
        self.stream.flush()


def _take_over_stdout() -> EventStream:
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
    """Start the peak-memory high-water mark afresh (Linux >= 4.0), so that work before training
    (the parity check, a second dropout-free session) does not count as the training's memory."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def run(request: WorkerRequest, events: EventStream) -> int:
    # Imports that may be slow or fail stay inside, so failures become events.
    from cnnbench import distributed, preprocess, timing
    from cnnbench.initializers import initial_weights
    from cnnbench.plugins import load_registry
    from cnnbench.results import OK
    from cnnbench.spec import spec_for

    start = timing.clock()
    registry = load_registry()
    backend = registry.backend(request.backend).item
    dataset = registry.dataset(request.data.dataset).item
    data = preprocess.prepare(dataset.load(request.data), request.data)
    spec = spec_for(dataset.input_shape, dataset.num_classes, request.train.dropout)

    events.emit("phase", name="import")
    t = timing.clock()
    backend.import_framework(request.variant)
    import_s = timing.clock() - t

    events.emit("phase", name="build")
    t = timing.clock()
    session = backend.create_session(spec, request.train, request.variant)
    weights = initial_weights(spec, request.train.init, request.train.seed)
    if weights is not None:
        session.set_weights(weights)
    session.sync()
    build_s = timing.clock() - t
    parameters = int(sum(w.size for w in session.get_weights().values()))

    parity: dict = {}
    if request.extra.get("parity"):
        from cnnbench.parity import check_session

        events.emit("phase", name="parity check")
        own_weights = weights if weights is not None else session.get_weights()
        t = timing.clock()
        parity = check_session(
            session, spec, request.train.optimizer, request.train.learning_rate, request.train.seed,
            backend=backend, config=request.train, variant=request.variant,
        )
        parity["seconds"] = timing.clock() - t
        session.set_weights(own_weights)  # the check left other weights and optimizer state
        import gc

        gc.collect()
        reset_peak_rss()

    events.emit("phase", name="load_data")
    t = timing.clock()
    session.load_data(data.x_train, data.y_train, data.x_test, data.y_test)
    session.sync()
    load_data_s = timing.clock() - t

    events.emit("phase", name="train", device=session.device)
    # Data-parallel: the protocol draws global batches (per-device batch x replicas); each session
    # takes its replicas' share of every row, so the batch order stays the harness's.
    where = distributed.cluster()
    global_batch = distributed.global_batch_size(request.train, where)
    outcome = timing.measure(
        session,
        data,
        replace(request.train, batch_size=global_batch),
        progress=lambda epoch, done, total: events.emit("progress", epoch=epoch, done=done, total=total),
        target_accuracy=request.target_accuracy,
        evaluate_each_epoch=bool(request.extra.get("evaluate_each_epoch")),
    )
    measurement = {
        "status": outcome.status,
        "reason": outcome.reason,
        "epochs": [asdict(e) for e in outcome.epochs],
        "phases": {
            "import_s": import_s,
            "build_s": build_s,
            "load_data_s": load_data_s,
            "first_epoch_s": outcome.first_epoch_s,
            "train_s": outcome.train_s,
            "eval_s": outcome.eval_s,
            "total_s": timing.clock() - start,
        },
        "train_throughput": outcome.train_throughput,
        "train_throughput_samples": outcome.train_throughput_samples,
        "eval_throughput": outcome.eval_throughput,
        "test_accuracy": outcome.test_accuracy,
        "test_loss": outcome.test_loss,
        "peak_rss_mb": peak_rss_mb(),
        "peak_device_memory_mb": session.peak_device_memory_mb(),
        "time_to_accuracy_s": outcome.time_to_accuracy_s,
    }
    events.emit(
        "result",
        measurement=measurement,
        device=session.device,
        parameters=parameters,
        parity=parity,
        settings={
            **session.settings(),
            "devices_per_host": request.train.devices,
            "hosts": where.num_hosts,
            "global_batch": global_batch,
        },
        model={"name": spec.name, "parameters": spec.num_params, "flops_train_per_sample": spec.flops_train, "input_shape": list(spec.input_shape)},
        preprocessing=data.record,
    )
    session.close()
    return 0 if outcome.status == OK else 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    events = _take_over_stdout()
    try:
        with open(argv[0]) as handle:
            request = WorkerRequest.from_json(handle.read())
        return run(request, events)
    except BaseException as exc:  # report everything, then die with a non-zero code
        from cnnbench.errors import BackendUnavailable

        traceback.print_exc(file=sys.stderr)
        kind = "unavailable" if isinstance(exc, BackendUnavailable) else "error"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        events.emit(kind, reason=f"{type(exc).__name__}: {message}" if kind == "error" else message, peak_rss_mb=peak_rss_mb())
        return 130 if isinstance(exc, KeyboardInterrupt) else 1


if __name__ == "__main__":
    sys.exit(main())
