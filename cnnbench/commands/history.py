"""``cnnbench history``: one metric across stored runs, as a table and optionally a PNG."""

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
@click.option("--metric", "-m", default="train_throughput", show_default=True,
              help="Metric: train_throughput, eval_throughput, first_epoch, accuracy, peak_rss, or any result field.")
@click.option("--dataset", default=None, help="Only runs on this dataset [the newest run's].")
@click.option("--last", type=int, default=None, help="Only the newest N runs.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG plot, one line per framework.")
@click.option("--results-dir", type=click.Path(file_okay=False), default=None,
              help="Result store [$CNNBENCH_RESULTS_DIR or ./results].")
def history_command(
    runs: tuple[str, ...], metric: str, dataset: str | None, last: int | None, plot_path: str | None,
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
    names, rows = history.history_rows(stored, chosen)
    console.print(report.history_table(names, rows, chosen, chosen_dataset))
    if plot_path:
        out = history.plot_history(stored, chosen, Path(plot_path))
        err_console.print(Text.assemble("wrote ", report.literal(out)), highlight=False)


command: click.Command = history_command
