"""The scaling report: per framework, throughput at each device count, speed-up, efficiency, accuracy.

Built from ordinary run results (one per device count, each saved like any run), so a report can
be printed again from the saved files. Speed-up is relative to the same backend's one-replica
run in the same report; efficiency is speed-up / replicas; accuracy is after the same epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import JustifyMethod
from rich.table import Table

from cnnbench.report import STATUS_STYLE, fmt_number, fmt_percent, literal
from cnnbench.results import OK, BackendResult, RunResult

#: Shown under the table when every data-parallel row ran on simulated CPU devices.
SIMULATED_NOTE = (
    "CPU devices here are simulated (torch: processes, TF: logical devices, JAX/Keras: forced host devices) "
    "and share the same cores: the figures show each engine's overhead, not a speed-up."
)


@dataclass(frozen=True)
class ScalingPoint:
    backend: str
    framework_version: str
    replicas: int
    devices_per_host: int
    hosts: int
    global_batch: int
    status: str
    reason: str = ""
    throughput: float | None = None
    test_accuracy: float | None = None
    engine: str = ""
    device: str = ""


def point(result: RunResult, row: BackendResult) -> ScalingPoint:
    devices = int(row.settings.get("devices_per_host", result.train.devices))
    hosts = int(row.settings.get("hosts", 1))
    replicas = devices * hosts
    return ScalingPoint(
        backend=row.backend,
        framework_version=row.framework_version,
        replicas=replicas,
        devices_per_host=devices,
        hosts=hosts,
        global_batch=int(row.settings.get("global_batch", result.train.batch_size * replicas)),
        status=row.status,
        reason=row.reason,
        throughput=row.median("train_throughput"),
        test_accuracy=row.median("test_accuracy"),
        engine=str(row.settings.get("data_parallel", "single device" if replicas == 1 else "")),
        device=row.device,
    )


def collect(results: list[RunResult]) -> dict[str, list[ScalingPoint]]:
    """Points per backend, in the order backends first appear, each sorted by replicas."""
    by_backend: dict[str, list[ScalingPoint]] = {}
    for result in results:
        for row in result.backends:
            by_backend.setdefault(row.backend, []).append(point(result, row))
    return {name: sorted(points, key=lambda p: p.replicas) for name, points in by_backend.items()}


def baseline(points: list[ScalingPoint]) -> ScalingPoint | None:
    return next((p for p in points if p.replicas == 1 and p.status == OK and p.throughput), None)


def speedup(p: ScalingPoint, base: ScalingPoint | None) -> float | None:
    """Throughput over the one-replica baseline's; None without a usable baseline or figure."""
    if base is None or not base.throughput or p.status != OK or not p.throughput:
        return None
    return p.throughput / base.throughput


def scaling_table(results: list[RunResult], title: str | None = None) -> Table:
    """Per backend and device count: throughput, speed-up, efficiency, accuracy; names and reasons shown literally."""
    first = results[0]
    train = first.train
    default_title = (
        f"Data-parallel scaling: {first.data.dataset}, per-device batch {train.batch_size}, {train.optimizer} "
        f"lr {train.learning_rate:g}, {train.epochs} epoch{'s' if train.epochs != 1 else ''}, {train.threads} "
        "threads; speed-up vs 1 device, efficiency = speed-up / devices"
    )
    table = Table(title=literal(title or default_title), title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("framework", "left"),
        ("devices", "right"),
        ("global batch", "right"),
        ("train samples/s", "right"),
        ("speed-up", "right"),
        ("efficiency", "right"),
        ("test acc", "right"),
        ("Δ acc", "right"),
        ("engine", "left"),
        ("status", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    for backend, points in collect(results).items():
        base = baseline(points)
        for index, p in enumerate(points):
            gain = speedup(p, base)
            delta = None
            if base is not None and base.test_accuracy is not None and p.test_accuracy is not None and p.status == OK:
                delta = p.test_accuracy - base.test_accuracy
            status = p.status if p.status == OK else f"{p.status}: {p.reason}"
            devices = str(p.devices_per_host) if p.hosts == 1 else f"{p.hosts} x {p.devices_per_host}"
            table.add_row(
                literal(backend if index == 0 else ""),
                devices,
                f"{p.global_batch:,}",
                fmt_number(p.throughput),
                "-" if gain is None else f"{gain:.2f}x",
                "-" if gain is None else f"{100 * gain / p.replicas:.0f}%",
                fmt_percent(p.test_accuracy if p.status == OK else None),
                "-" if delta is None or p.replicas == 1 else f"{100 * delta:+.2f} pt",
                literal(p.engine or "-"),
                literal(status, STATUS_STYLE.get(p.status, "")),
            )
        table.add_section()
    return table


def simulated_devices_only(results: list[RunResult]) -> bool:
    """Every data-parallel row that ran did so on CPU devices (simulated on one machine)."""
    points = [p for points in collect(results).values() for p in points if p.replicas > 1 and p.status == OK]
    return bool(points) and all(
        p.hosts == 1 and "cpu" in p.device.lower() and "cuda" not in p.device.lower() for p in points
    )
