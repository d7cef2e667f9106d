"""``cnnbench history``: one metric across stored runs, a table per series (configuration and machine), a PNG."""

from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from cnnbench import history, report, results
from cnnbench.commands.common import console, err_console
from cnnbench.compare import metric_for
from cnnbench.errors import UsageError


@click.command("history")
@click.argument("runs", nargs=-1)
@click.option(
    "--metric",
    "-m",
    default="train_throughput",
    show_default=True,
    help="Metric: train_throughput, eval_throughput, first_epoch, accuracy, peak_rss, or any result field.",
)
@click.option("--dataset", default=None, help="Only runs on this dataset [the newest run's].")
@click.option("--last", type=int, default=None, help="Only the newest N runs.")
@click.option(
    "--series",
    "which_series",
    default="all",
    show_default=True,
    metavar="all|latest|N",
    help="Runs of one configuration and machine form a series: all of them (a table each), "
    "the newest run's, or series N.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a PNG plot, one line per framework and series.",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Result store [$CNNBENCH_RESULTS_DIR or ./results].",
)
def history_command(
    runs: tuple[str, ...],
    metric: str,
    dataset: str | None,
    last: int | None,
    which_series: str,
    plot_path: str | None,
    results_dir: str | None,
) -> None:
    """Show METRIC across RUNS (result files or store names; default: every run in the store)."""
    chosen = metric_for(metric)
    if last is not None and last < 1:
        raise UsageError(f"--last must be at least 1, got {last}")
    if runs:
        stored, skipped = history.load_runs([results.resolve(name, results_dir) for name in runs], strict=True)
    else:
        files = history.store_files(results_dir)
        if not files:
            where = results.results_dir(results_dir)
            raise UsageError(f"no runs in {where}; run 'cnnbench run' first or name result files")
        stored, skipped = history.load_runs(files)
    for reason in skipped:
        err_console.print(report.skipped_line(reason), highlight=False, soft_wrap=True)
    stored, chosen_dataset = history.select_dataset(stored, dataset)
    if not stored:
        raise UsageError(f"no readable run on dataset {chosen_dataset!r}")
    if last:
        stored = stored[-last:]
    everything = history.split_series(stored)
    shown = history.select_series(everything, which_series)
    kept = {id(run) for line in shown for run in line.runs}
    stored = [run for run in stored if id(run) in kept]
    for line in shown:
        if len(everything) > 1:
            runs_text = f"{len(line.runs)} run{'s' if len(line.runs) != 1 else ''}"
            heading = f"{line.label} ({runs_text}; {len(everything)} series in all)"
            console.print(Text.assemble(("▶ ", "bold cyan"), report.literal(heading, "bold")), soft_wrap=True)
        names, rows = history.history_rows(line.runs, chosen)
        console.print(report.history_table(names, rows, chosen, chosen_dataset))
    if plot_path:
        out = history.plot_history(stored, chosen, Path(plot_path))
        err_console.print(Text.assemble("wrote ", report.literal(out)), highlight=False)


command: click.Command = history_command
