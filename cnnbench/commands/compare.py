"""``cnnbench compare BASELINE CURRENT``: the CI gate. Exit 1 on a regression, 0 otherwise, 2 on bad input."""

from __future__ import annotations

from pathlib import Path

import click

from cnnbench import report, results
from cnnbench.commands.common import console
from cnnbench.compare import (
    DEFAULT_ALPHA,
    DEFAULT_FAIL_ON,
    DEFAULT_THRESHOLDS,
    METRICS,
    compare_runs,
    metric_for,
    parse_fail_on,
    require_same_config,
)
from cnnbench.errors import ExitCode, UsageError


@click.command("compare")
@click.argument("baseline")
@click.argument("current", default="latest")
@click.option(
    "--fail-on",
    default="",
    metavar="METRIC:THRESHOLD,...",
    help=f"Per-metric regression thresholds, merged over the defaults [{DEFAULT_FAIL_ON}]. "
    "Units: % (relative), pp (accuracy points) or none (the metric's unit); 'METRIC:off' stops gating a metric.",
)
@click.option(
    "--metrics", default=",".join(m.key for m in METRICS), show_default=True, help="Comma list of metrics to compare."
)
@click.option(
    "--alpha",
    type=float,
    default=DEFAULT_ALPHA,
    show_default=True,
    help="Significance level of the Mann-Whitney noise test.",
)
@click.option(
    "--fail-on-missing",
    is_flag=True,
    default=False,
    help="A framework of the baseline that is absent or unavailable now is a regression.",
)
@click.option(
    "--allow-config-change",
    is_flag=True,
    default=False,
    help="Compare runs of different configurations (dataset, epochs, batch size...) instead of exit 2.",
)
@click.option(
    "--summary",
    "summary_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append the comparison as markdown to this file (e.g. $GITHUB_STEP_SUMMARY).",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Result store for names like latest~1 [$CNNBENCH_RESULTS_DIR or ./results].",
)
def compare_command(
    baseline: str,
    current: str,
    fail_on: str,
    metrics: str,
    alpha: float,
    fail_on_missing: bool,
    allow_config_change: bool,
    summary_path: str | None,
    results_dir: str | None,
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
        results.load(base_path),
        results.load(cur_path),
        thresholds,
        chosen,
        alpha,
        fail_on_missing,
        baseline_name=base_path.name,
        current_name=cur_path.name,
    )
    if not allow_config_change:
        require_same_config(comparison)
    console.print(report.comparison_table(comparison))
    for warning in report.comparison_warnings(comparison):
        console.print(warning, highlight=False, soft_wrap=True)
    if summary_path:
        from cnnbench.exporters import comparison_markdown

        try:
            with Path(summary_path).open("a") as handle:
                handle.write(comparison_markdown(comparison))
        except OSError as exc:
            raise UsageError(f"cannot write summary {summary_path}: {exc.strerror or exc}") from None
    console.print(report.comparison_outcome(comparison), highlight=False, soft_wrap=True)
    if comparison.regressions:
        click.get_current_context().exit(ExitCode.REGRESSION)


command: click.Command = compare_command
