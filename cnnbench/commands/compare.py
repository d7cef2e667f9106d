"""``cnnbench compare BASELINE CURRENT``: the CI gate. Exit 1 on a regression, 0 otherwise, 2 on bad input."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import JustifyMethod
from rich.table import Table

from cnnbench import results
from cnnbench.commands.common import console
from cnnbench.compare import (
    BETTER,
    DEFAULT_ALPHA,
    DEFAULT_FAIL_ON,
    DEFAULT_THRESHOLDS,
    FAILED,
    METRICS,
    MISSING,
    NEW,
    WORSE,
    Comparison,
    compare_runs,
    metric_for,
    parse_fail_on,
)
from cnnbench.errors import UsageError

VERDICT_STYLE = {WORSE: "bold red", FAILED: "bold red", BETTER: "green", MISSING: "yellow", NEW: "cyan"}


def comparison_table(comparison: Comparison) -> Table:
    title = f"cnnbench compare: {comparison.baseline_name} -> {comparison.current_name}"
    table = Table(title=title, title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("framework", "left"), ("metric", "left"), ("baseline", "right"), ("current", "right"), ("change", "right"),
        ("change %", "right"), ("fails at", "right"), ("verdict", "left"), ("evidence", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    previous = None
    for row in comparison.rows:
        style = VERDICT_STYLE.get(row.verdict, "")
        verdict = f"{row.verdict} ✗ REGRESSION" if row.regression else row.verdict
        table.add_row(
            row.backend if row.backend != previous else "",
            row.metric.label,
            row.format_side(row.baseline),
            row.format_side(row.current),
            row.metric.format_change(row.change),
            row.format_relative(),
            row.threshold.describe(row.metric) if row.threshold else "off",
            f"[{style}]{verdict}[/{style}]" if style else verdict,
            row.evidence,
        )
        previous = row.backend
    return table


@click.command("compare")
@click.argument("baseline")
@click.argument("current", default="latest")
@click.option(
    "--fail-on", default="", metavar="METRIC:THRESHOLD,...",
    help=f"Per-metric regression thresholds, merged over the defaults [{DEFAULT_FAIL_ON}]. "
    "Units: % (relative), pp (accuracy points) or none (the metric's unit); 'METRIC:off' stops gating a metric.",
)
@click.option("--metrics", default=",".join(m.key for m in METRICS), show_default=True,
              help="Comma list of metrics to compare.")
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
              help="Significance level of the Mann-Whitney noise test.")
@click.option("--fail-on-missing", is_flag=True, default=False,
              help="A framework of the baseline that is absent or unavailable now is a regression.")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), default=None,
              help="Append the comparison as markdown to this file (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--results-dir", type=click.Path(file_okay=False), default=None,
              help="Result store for names like latest~1 [$CNNBENCH_RESULTS_DIR or ./results].")
def compare_command(
    baseline: str, current: str, fail_on: str, metrics: str, alpha: float, fail_on_missing: bool,
    summary_path: str | None, results_dir: str | None,
) -> None:
    """Compare CURRENT (default: latest) against BASELINE, per framework and metric.

    BASELINE and CURRENT are result files, names in the store, or latest / latest~N. A row is a
    regression when its change passes the metric's threshold in the bad direction and the
    repeats put it beyond the threshold, not within noise. Exit status: 1 on a regression, 0 otherwise, 2 on bad input.
    """
    thresholds = parse_fail_on(fail_on, DEFAULT_THRESHOLDS)
    chosen = [metric_for(name) for name in metrics.split(",") if name.strip()]
    if not chosen:
        raise UsageError("--metrics is empty")
    base_path, cur_path = results.resolve(baseline, results_dir), results.resolve(current, results_dir)
    comparison = compare_runs(
        results.load(base_path), results.load(cur_path), thresholds, chosen, alpha, fail_on_missing,
        baseline_name=base_path.name, current_name=cur_path.name,
    )
    console.print(comparison_table(comparison))
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if summary_path:
        from cnnbench.exporters import comparison_markdown

        try:
            with Path(summary_path).open("a") as handle:
                handle.write(comparison_markdown(comparison))
        except OSError as exc:
            raise UsageError(f"cannot write summary {summary_path}: {exc.strerror or exc}") from None
    regressions = comparison.regressions
    if regressions:
        names = ", ".join(f"{r.backend} {r.metric.label}" for r in regressions)
        count = f"{len(regressions)} regression{'s' if len(regressions) != 1 else ''}"
        console.print(f"[bold red]{count}:[/bold red] {names}", highlight=False, soft_wrap=True)
        click.get_current_context().exit(1)
    console.print("[green]no regression[/green]")


command: click.Command = compare_command
