"""Rich tables for results: what a person reads after a run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnnbench import stats
from cnnbench.results import OK, BackendResult, RunResult

STATUS_STYLE = {"ok": "green", "failed": "red", "timeout": "red", "diverged": "yellow", "interrupted": "yellow", "unavailable": "dim", "unsupported": "dim"}


def fmt_number(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or not stats.finite(value):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def fmt_spread(values: list[float], digits: int = 0) -> str:
    """Median, and with repeats its IQR: ``2,125 ± 31``."""
    m = stats.median(values)
    if m is None:
        return "-"
    if len(values) < 2:
        return fmt_number(m, digits)
    return f"{fmt_number(m, digits)} ± {fmt_number((stats.iqr(values) or 0) / 2, digits)}"


def fmt_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def backend_label(row: BackendResult) -> str:
    return row.backend


def results_table(result: RunResult, title: str | None = None) -> Table:
    repeats = f", median of {result.repeat} repeats (± half IQR)" if result.repeat > 1 else ""
    train = result.train
    default_title = (
        f"cnnbench: {result.data.dataset}, {train.optimizer} lr {train.learning_rate:g}, batch {train.batch_size}, "
        f"{train.epochs} epoch{'s' if train.epochs != 1 else ''}, {train.threads} threads{repeats}"
    )
    table = Table(title=title or default_title, title_justify="left")
    for name, justify in [
        ("framework", "left"), ("version", "left"), ("device", "left"), ("params", "right"), ("test acc", "right"),
        ("train samples/s", "right"), ("GFLOP/s (% peak)", "right"), ("eval samples/s", "right"),
        ("first epoch s", "right"), ("total s", "right"), ("parity", "left"), ("status", "left"),
    ]:
        table.add_column(name, justify=justify, overflow="fold")
    for row in result.backends:
        style = STATUS_STYLE.get(row.status, "")
        status = row.status if row.status == OK else escape(f"{row.status}: {row.reason}")
        table.add_row(
            backend_label(row),
            row.framework_version,
            row.device or "-",
            fmt_number(row.parameters),
            fmt_percent(row.median("test_accuracy")),
            fmt_spread(_throughputs(row)) + (" [red]![/red]" if parity_status(row) == "FAIL" else ""),
            fmt_efficiency(result, row),
            fmt_spread(row.values("eval_throughput")),
            fmt_spread(row.values("first_epoch_s"), 2),
            fmt_spread(row.values("total_s"), 1),
            fmt_parity(row),
            f"[{style}]{status}[/{style}]" if style else status,
        )
    return table


def parity_status(row: BackendResult) -> str:
    return str(row.parity.get("status", "not checked")) if row.parity else "not checked"


def fmt_parity(row: BackendResult) -> str:
    status = parity_status(row)
    if status == "PASS":
        return "[green]PASS[/green]"
    if status == "FAIL":
        return f"[red]FAIL[/red]: {escape(str(row.parity.get('message', '')))}"
    return f"[dim]{status}[/dim]"


def fmt_efficiency(result: RunResult, row: BackendResult) -> str:
    """Achieved training GFLOP/s (spec FLOPs x samples/s) and its share of the matmul ceiling."""
    from cnnbench.ceiling import efficiency

    peak = (result.environment.get("matmul_ceiling") or {}).get("gflops")
    achieved, fraction = efficiency(result.model.get("flops_train_per_sample"), row.median("train_throughput"), peak)
    if achieved is None:
        return "-"
    return f"{achieved:,.0f}" + (f" ({100 * fraction:.0f}%)" if fraction is not None else "")


def _throughputs(row: BackendResult) -> list[float]:
    """Steady-state samples/s: one value per repeat (each already a median over epochs)."""
    return row.values("train_throughput")


def print_result(result: RunResult, console: Console | None = None, title: str | None = None) -> None:
    console = console or Console()
    console.print(results_table(result, title))
    if any(parity_status(row) == "FAIL" for row in result.backends):
        console.print("[red]![/red] this backend failed the parity check: its speed is not for a model equal to the others' (see 'cnnbench check')")
    differing = differing_settings(result)
    if differing:
        console.print(settings_table(differing))


def differing_settings(result: RunResult) -> dict[str, dict[str, Any]]:
    """Manifest keys whose values differ between the backends that ran (the fairness check)."""
    rows = [row for row in result.backends if row.settings]
    keys = sorted({key for row in rows for key in row.settings})
    differing: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = {row.backend: row.settings.get(key, "-") for row in rows}
        if len({str(v) for v in values.values()}) > 1:
            differing[key] = values
    return differing


def settings_table(differing: dict[str, dict[str, Any]]) -> Table:
    backends = sorted({b for values in differing.values() for b in values})
    table = Table(title="Settings that differ between backends", title_justify="left")
    table.add_column("setting")
    for backend in backends:
        table.add_column(backend, overflow="fold")
    for key, values in differing.items():
        table.add_row(key, *[str(values.get(b, "-")) for b in backends])
    return table


def reproduce_table(runs: list, quick: bool, wall_s: float | None = None) -> Table:
    """Published vs measured test accuracy per preset and framework, with training time.

    ``runs`` holds (preset, RunResult) pairs. Quick runs are labelled in the title: their
    numbers are not comparable with the published ones.
    """
    backends: list[str] = []
    for _, run in runs:
        for row in run.backends:
            if row.backend not in backends:
                backends.append(row.backend)
    title = "Reproducing the reference chapter" + (" - QUICK: fewer epochs and subsets, not comparable with the published figures" if quick else "")
    if wall_s is not None:
        title += f" (wall time {wall_s / 60:.1f} min)"
    table = Table(title=title, title_justify="left")
    table.add_column("experiment")
    table.add_column("published", justify="right")
    for backend in backends:
        table.add_column(f"{backend}\nacc (diff) | train s", justify="right")
    for preset, run in runs:
        cells = []
        for backend in backends:
            row = run.backend(backend)
            accuracy = row.median("test_accuracy") if row else None
            if row is None or accuracy is None:
                cells.append("-" if row is None else f"[dim]{row.status}[/dim]")
                continue
            diff = 100 * (accuracy - preset.published_accuracy)
            colour = "green" if abs(diff) <= 0.5 else ("yellow" if abs(diff) <= 1.0 else "red")
            cells.append(f"{100 * accuracy:.2f}% ([{colour}]{diff:+.2f}[/{colour}]) | {fmt_number(row.median('train_s'), 0)}")
        epochs = run.train.epochs
        table.add_row(f"{preset.name} ({epochs} ep)", f"{100 * preset.published_accuracy:.2f}% ({preset.published_with})", *cells)
    return table
