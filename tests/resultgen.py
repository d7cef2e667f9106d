"""Result files built from the dataclasses, for tests of compare, export and history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cnnbench import results, stats
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.results import OK, BackendResult, EpochRecord, Measurement, Phases, RunResult

#: A backend name an attacker would pick: rich markup (a live link, a closing tag that raises), an ANSI
#: colour, an OSC 8 hyperlink, a bidi override, a markdown link and a matplotlib formula that does not parse.
HOSTILE = (
    "[link=http://x]evil[/link] [/] \x1b[31mred\x1b[0m \x1b]8;;http://x\x1b\\osc\x1b]8;;\x1b\\ "
    "\u202eabc [md](http://x) $\\frac$ :thumbs_up:"
)
ENVIRONMENT = {
    "cpu": "Test CPU",
    "cores": 2,
    "hostname": "testhost",
    "python": "3.11.9",
    "os": "Linux 6.1",
    "machine": "x86_64",
    "git_commit": "abc123def456",
}


def measurement(
    throughput: float,
    *,
    eval_throughput: float = 5000.0,
    accuracy: float = 0.95,
    peak_rss_mb: float = 600.0,
    first_epoch_s: float = 2.0,
    epochs: int = 3,
    n_train: int = 3000,
    batch_size: int = 100,
) -> Measurement:
    """One repeat whose steady-state epochs ran at ``throughput`` (epoch 1 slower, as with a real warm-up)."""
    samples = n_train // batch_size * batch_size
    steady = tuple(throughput * f for f in (0.99, 1.01)[: epochs - 1])
    records = [EpochRecord(1, 1.0, first_epoch_s, samples, samples / first_epoch_s)]
    records += [EpochRecord(i + 2, 0.5, samples / r, samples, r) for i, r in enumerate(steady)]
    return Measurement(
        status=OK,
        epochs=tuple(records),
        phases=Phases(
            import_s=1.0,
            build_s=0.1,
            load_data_s=0.01,
            first_epoch_s=first_epoch_s,
            train_s=sum(e.seconds for e in records),
            eval_s=1000 / eval_throughput,
            total_s=10.0,
        ),
        train_throughput=stats.median(steady),
        train_throughput_samples=steady,
        eval_throughput=eval_throughput,
        test_accuracy=accuracy,
        test_loss=0.2,
        peak_rss_mb=peak_rss_mb,
    )


def backend(name: str, throughputs: Sequence[float], status: str = OK, reason: str = "", **kwargs) -> BackendResult:
    """A framework row with one repeat per throughput value; ``kwargs`` go to every ``measurement``."""
    repeats = tuple(measurement(t, **kwargs) for t in throughputs)
    if status != OK:
        repeats = (*repeats, Measurement(status=status, reason=reason))
    return BackendResult(
        backend=name,
        framework=name.capitalize(),
        framework_version="1.0",
        plugin=name,
        device="cpu",
        parameters=3_274_634,
        status=status,
        reason=reason,
        settings={"threads": 2},
        repeats=repeats,
    )


def run(
    backends: Sequence[BackendResult],
    run_id: str = "20250101T000000Z",
    created: str = "2025-01-01T00:00:00+00:00",
    dataset: str = "synthetic",
    environment: dict | None = None,
) -> RunResult:
    repeat = max((len(b.repeats) for b in backends), default=1)
    return RunResult(
        run_id=run_id,
        created=created,
        train=TrainConfig(epochs=3, threads=2),
        data=DataConfig(dataset=dataset, limit_train=3000, limit_test=1000),
        backends=tuple(backends),
        environment=dict(environment or ENVIRONMENT),
        preprocessing={"n_train": 3000, "n_test": 1000},
        repeat=repeat,
    )


def save(result: RunResult, folder: Path, name: str | None = None) -> Path:
    return results.save(result, folder, filename=name or f"{result.run_id}_testhost.json")


def full_run(name: str = "torch") -> RunResult:
    """A run with every optional section filled (parity, settings, ceiling, per-epoch accuracy, a failed row)."""
    good = backend(name, [1000.0, 1010.0, 990.0])
    epochs = tuple(replace(e, test_accuracy=0.9) for e in good.repeats[0].epochs)
    good = replace(
        good,
        repeats=(replace(good.repeats[0], epochs=epochs, time_to_accuracy_s=3.0), *good.repeats[1:]),
        parity={"status": "FAIL", "message": "max diff 0.3"},
        settings={
            "threads": 2,
            "devices_per_host": 1,
            "hosts": 1,
            "global_batch": 100,
            "data_parallel": "single device",
        },
    )
    failed = backend("jax", [900.0], status="failed", reason="worker killed")
    result = run([good, failed])
    return replace(
        result,
        environment={**result.environment, "matmul_ceiling": {"gflops": 100.0, "threads": 2}},
        model={"name": "cnn", "flops_train_per_sample": 1.0e7},
    )
