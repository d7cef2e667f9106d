"""Rich tables for results: what a person reads after a run.

Every string that comes from a plugin, a path or a result file reaches rich as a ``Text`` built by
``literal``: never parsed as markup (``[link=...]``, ``[/]``) or emoji codes, and with control
characters shown as visible escapes instead of being sent to the terminal (ANSI colours, OSC
hyperlinks and titles, cursor moves, bidi overrides). ``strip_controls`` is the same idea for
files other tools read: exports drop those characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from cnnbench import stats
from cnnbench.results import OK, BackendResult, Measurement, RunResult

if TYPE_CHECKING:
    from cnnbench.compare import Comparison, Metric
    from cnnbench.history import Point, StoredRun

#: Terminal escape sequences, whole (so no ``[31m`` is left behind), 7-bit and 8-bit forms:
#: OSC (hyperlinks, window titles) up to BEL or ST; DCS/SOS/PM/APC strings; CSI; other ESC pairs.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b[P^_X]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|\x1b[ -/]*[0-~]?"
)
#: C0 controls but tab and newline, DEL, C1, and the bidi marks and overrides ("Trojan source").
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: object) -> str:
    """``text`` without escape sequences and control characters (tab and newline stay): for exports."""
    return _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", str(text)))


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible_controls(text: object) -> str:
    r"""``text`` with every control character (but tab and newline) written out as ``\x1b`` / ``\u202e``."""
    return _CONTROL.sub(_visible, str(text))


def literal(text: object, style: str = "") -> Text:
    """Untrusted text as rich shows it verbatim: no markup, no emoji codes, controls made visible."""
    return Text(visible_controls(text), style=style)


STATUS_STYLE = {
    "ok": "green",
    "failed": "red",
    "timeout": "red",
    "diverged": "yellow",
    "interrupted": "yellow",
    "unavailable": "dim",
    "unsupported": "dim",
}


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


def results_table(result: RunResult, title: str | None = None) -> Table:
    """One row per backend and mode, the modes of a framework together under it (default mode first)."""
    repeats = f", median of {result.repeat} repeats (± half IQR)" if result.repeat > 1 else ""
    train = result.train
    default_title = (
        f"cnnbench: {train.model} on {result.data.dataset}, {train.optimizer} lr {train.learning_rate:g}, "
        f"batch {train.batch_size}, "
        f"{train.epochs} epoch{'s' if train.epochs != 1 else ''}, {train.threads} threads{repeats}"
    )
    table = Table(title=literal(title or default_title), title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("framework", "left"),
        ("mode", "left"),
        ("version", "left"),
        ("device", "left"),
        ("params", "right"),
        ("test acc", "right"),
        ("train samples/s", "right"),
        ("GFLOP/s (% peak)", "right"),
        ("compile s", "right"),
        ("first epoch s", "right"),
        ("eval samples/s", "right"),
        ("total s", "right"),
        ("parity", "left"),
        ("status", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    previous_group = None
    for group, mode, row in grouped_rows(result.backends):
        status = row.status if row.status == OK else f"{row.status}: {row.reason}"
        speed = Text(fmt_spread(_throughputs(row)))
        if parity_status(row) == "FAIL":
            speed.append(" !", style="red")
        table.add_row(
            literal(group if group != previous_group else ""),
            literal(mode),
            literal(row.framework_version),
            literal(row.device or "-"),
            fmt_number(row.parameters),
            fmt_percent(row.median("test_accuracy")),
            speed,
            _efficiency_cell(result, row),
            fmt_spread(compile_seconds(row), 1),
            fmt_spread(row.values("first_epoch_s"), 2),
            fmt_spread(row.values("eval_throughput")),
            fmt_spread(row.values("total_s"), 1),
            fmt_parity(row),
            literal(status, STATUS_STYLE.get(row.status, "")),
        )
        previous_group = group
    return table


#: Marks a framework's default mode in the table (the one ``--frameworks all`` runs).
DEFAULT_MODE_MARK = " *"


def grouped_rows(rows: Sequence[BackendResult]) -> list[tuple[str, str, BackendResult]]:
    """(framework group, mode label, row): groups in order of first appearance, each default mode first."""
    from cnnbench.modes import MODE_DEFAULT_KEY, group_and_mode

    groups: dict[str, list[tuple[bool, str, BackendResult]]] = {}
    for row in rows:
        group, mode = group_and_mode(row.backend, row.settings)
        is_default = row.settings.get(MODE_DEFAULT_KEY) is True
        groups.setdefault(group, []).append((is_default, mode + (DEFAULT_MODE_MARK if is_default else ""), row))
    ordered: list[tuple[str, str, BackendResult]] = []
    for group, members in groups.items():
        members.sort(key=lambda member: not member[0])  # stable: the default first, the rest as they ran
        ordered.extend((group, label, row) for _, label, row in members)
    return ordered


def warmup_seconds(measurement: Measurement) -> float | None:
    """What the first epoch took beyond its steady-state time: compile, tracing, autotune, cache warm-up.

    First-epoch seconds minus that epoch's samples at the steady-state rate; 0 when noise makes it negative.
    """
    first, rate = measurement.phases.first_epoch_s, measurement.train_throughput
    if first is None or not rate or not measurement.epochs or not stats.finite(rate):
        return None
    return max(0.0, first - measurement.epochs[0].samples / rate)


def compile_seconds(row: BackendResult) -> list[float]:
    """``warmup_seconds`` of each successful repeat of a row."""
    return [value for value in (warmup_seconds(m) for m in row.ok_repeats()) if value is not None]


def parity_status(row: BackendResult) -> str:
    return str(row.parity.get("status", "not checked")) if row.parity else "not checked"


def fmt_parity(row: BackendResult) -> Text:
    status = parity_status(row)
    if status == "PASS":
        return Text("PASS", style="green")
    if status == "FAIL":
        return Text.assemble(("FAIL", "red"), ": ", literal(row.parity.get("message", "")))
    return literal(status, "dim")


#: Marks an efficiency above the matmul ceiling (a footnote under the table says why).
ABOVE_CEILING_MARK = " !"


def fmt_efficiency(result: RunResult, row: BackendResult) -> str:
    """Achieved training GFLOP/s (spec FLOPs x samples/s) and its share of the matmul ceiling; ``!`` above it."""
    from cnnbench.ceiling import efficiency

    peak = (result.environment.get("matmul_ceiling") or {}).get("gflops")
    achieved, fraction = efficiency(result.model.get("flops_train_per_sample"), row.median("train_throughput"), peak)
    if achieved is None:
        return "-"
    text = f"{achieved:,.0f}" + (f" ({100 * fraction:.0f}%)" if fraction is not None else "")
    return text + ABOVE_CEILING_MARK if is_above_ceiling(result, row, fraction) else text


def is_above_ceiling(result: RunResult, row: BackendResult, fraction: float | None) -> bool:
    """Flagged by the run (``above_ceiling``, after re-measuring the ceiling) or, in older files, over 100%."""
    flagged = (result.environment.get("matmul_ceiling") or {}).get("above_ceiling")
    return (isinstance(flagged, list) and row.backend in flagged) or (fraction is not None and fraction > 1)


def _efficiency_cell(result: RunResult, row: BackendResult) -> Text:
    text = fmt_efficiency(result, row)
    if text.endswith(ABOVE_CEILING_MARK):
        return Text.assemble(text[: -len(ABOVE_CEILING_MARK)], (ABOVE_CEILING_MARK, "red"))
    return Text(text)


def _any_above_ceiling(result: RunResult) -> bool:
    return any(fmt_efficiency(result, row).endswith(ABOVE_CEILING_MARK) for row in result.backends)


def _throughputs(row: BackendResult) -> list[float]:
    """Steady-state samples/s: one value per repeat (each already a median over epochs)."""
    return row.values("train_throughput")


def print_result(result: RunResult, console: Console | None = None, title: str | None = None) -> None:
    console = console or Console()
    console.print(results_table(result, title))
    if any(label.endswith(DEFAULT_MODE_MARK) for _, label, _ in grouped_rows(result.backends)):
        console.print(
            Text(
                "* the framework's default mode (what --frameworks all runs); compile s: the first epoch's "
                "time beyond its steady-state rate",
                style="dim",
            )
        )
    if any(parity_status(row) == "FAIL" for row in result.backends):
        console.print(
            "[red]![/red] this backend failed the parity check: its speed is not for a model equal to the others' "
            "(see 'cnnbench check')"
        )
    if _any_above_ceiling(result):
        remeasured = (result.environment.get("matmul_ceiling") or {}).get("remeasured") is True
        console.print(
            Text.assemble(
                ("!", "red"),
                " GFLOP/s above the machine's measured matmul ceiling"
                + (" (measured again after the run)" if remeasured else "")
                + ": the ceiling understates this machine (measured under load?), so that % is not an efficiency",
            )
        )
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
        table.add_column(literal(backend), overflow="fold")
    for key, values in differing.items():
        table.add_row(literal(key), *[literal(values.get(b, "-")) for b in backends])
    return table


def reproduce_table(runs: list[tuple[Any, RunResult]], quick: bool, wall_s: float | None = None) -> Table:
    """Published vs measured test accuracy per preset and framework, with training time.

    ``runs`` holds (preset, RunResult) pairs. Quick runs are labelled in the title: their
    numbers are not comparable with the published ones.
    """
    backends: list[str] = []
    for _, run in runs:
        for row in run.backends:
            if row.backend not in backends:
                backends.append(row.backend)
    title = "Reproducing the reference chapter" + (
        " - QUICK: fewer epochs and subsets, not comparable with the published figures" if quick else ""
    )
    models = sorted({run.train.model for _, run in runs} - {"lenet"})
    if models:
        title += f" with {', '.join(models)} (the published figures are the chapter's LeNet's)"
    if wall_s is not None:
        title += f" (wall time {wall_s / 60:.1f} min)"
    table = Table(title=title, title_justify="left")
    table.add_column("experiment")
    table.add_column("published", justify="right")
    for backend in backends:
        table.add_column(literal(f"{backend}\nacc (diff) | train s"), justify="right")
    for preset, run in runs:
        cells: list[Text | str] = []
        for backend in backends:
            found = run.backend(backend)
            accuracy = found.median("test_accuracy") if found else None
            if found is None or accuracy is None:
                cells.append("-" if found is None else literal(found.status, "dim"))
                continue
            diff = 100 * (accuracy - preset.published_accuracy)
            colour = "green" if abs(diff) <= 0.5 else ("yellow" if abs(diff) <= 1.0 else "red")
            train_s = fmt_number(found.median("train_s"), 0)
            cells.append(Text.assemble(f"{100 * accuracy:.2f}% (", (f"{diff:+.2f}", colour), f") | {train_s}"))
        epochs = run.train.epochs
        published = f"{100 * preset.published_accuracy:.2f}% ({preset.published_with})"
        table.add_row(literal(f"{preset.name} ({epochs} ep)"), literal(published), *cells)
    return table


# --- compare and history -------------------------------------------------------------------------

#: Verdict -> style in the comparison table (keys are ``cnnbench.compare`` verdicts).
VERDICT_STYLE = {"worse": "bold red", "failed": "bold red", "better": "green", "missing": "yellow", "new": "cyan"}


def comparison_table(comparison: Comparison) -> Table:
    """One row per framework and metric: both sides, the change, the threshold and the verdict."""
    title = f"cnnbench compare: {comparison.baseline_name} -> {comparison.current_name}"
    table = Table(title=literal(title), title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("framework", "left"),
        ("metric", "left"),
        ("baseline", "right"),
        ("current", "right"),
        ("change", "right"),
        ("change %", "right"),
        ("fails at", "right"),
        ("verdict", "left"),
        ("evidence", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    previous = None
    for row in comparison.rows:
        verdict = f"{row.verdict} ✗ REGRESSION" if row.regression else row.verdict
        table.add_row(
            literal(row.backend if row.backend != previous else ""),
            literal(row.metric.label),
            row.format_side(row.baseline),
            row.format_side(row.current),
            row.metric.format_change(row.change),
            row.format_relative(),
            row.threshold.describe(row.metric) if row.threshold else "off",
            literal(verdict, VERDICT_STYLE.get(row.verdict, "")),
            literal(row.evidence),
        )
        previous = row.backend
    return table


def comparison_warnings(comparison: Comparison) -> list[Text]:
    """One line per difference between the runs (their texts quote values from the result files)."""
    return [Text.assemble(("warning:", "yellow"), " ", literal(warning)) for warning in comparison.warnings]


def comparison_outcome(comparison: Comparison) -> Text:
    """The last line of ``compare``: the regressions by name, or that there is none."""
    regressions = comparison.regressions
    if not regressions:
        return Text("no regression", style="green")
    head = f"{len(regressions)} regression{'s' if len(regressions) != 1 else ''}:"
    names = ", ".join(f"{r.backend} {r.metric.label}" for r in regressions)
    return Text.assemble((head, "bold red"), " ", literal(names))


def history_table(
    names: Sequence[str],
    rows: Sequence[tuple[StoredRun, dict[str, Point]]],
    metric: Metric,
    dataset: str | None,
) -> Table:
    """One row per stored run, one column per framework: the median ± half IQR of its repeats."""
    from cnnbench.compare import format_spread

    unit = "%" if metric.fraction else metric.unit
    title = f"{metric.label} ({unit}, {metric.direction}) on {dataset}: median ± half IQR"
    table = Table(title=literal(title), title_justify="left")
    table.add_column("run", overflow="fold")
    table.add_column("commit", overflow="fold")
    for name in names:
        table.add_column(literal(name), justify="right")
    for run, found in rows:
        cells: list[Text | str] = []
        for name in names:
            row = run.result.backend(name) if name in found else None
            values = [v for v in row.values(metric.key) if stats.finite(v)] if row else []
            cells.append(format_spread(metric, values) if values else "-")
        table.add_row(literal(run.path.name), literal(run.result.environment.get("git_commit") or "-"), *cells)
    return table


def skipped_line(reason: str) -> Text:
    """``history``'s note for a result file it could not read (the reason names the file)."""
    return Text.assemble(("skipped", "yellow"), " ", literal(reason))
