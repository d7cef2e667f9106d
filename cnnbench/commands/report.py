"""``cnnbench report [RESULT ...] -o DIR``: a self-contained HTML report of runs, their history and a comparison."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from cnnbench import history, results
from cnnbench.errors import CnnbenchError, UsageError
from cnnbench.report import literal, skipped_line

DEFAULT_OUTPUT = "cnnbench-report"


@click.command("report")
@click.argument("runs", nargs=-1)
@click.option(
    "--output",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="Folder to write index.html into.",
)
@click.option(
    "--baseline",
    default=None,
    metavar="RESULT",
    help="Compare the newest run against this result (path, store name, latest~N) [the previous run on its dataset].",
)
@click.option("--dataset", default=None, help="Only runs on this dataset.")
@click.option("--last", type=int, default=None, help="Only the newest N runs.")
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Result store [$CNNBENCH_RESULTS_DIR or ./results].",
)
def command(
    runs: tuple[str, ...],
    out_dir: str,
    baseline: str | None,
    dataset: str | None,
    last: int | None,
    results_dir: str | None,
) -> None:
    """Write DIR/index.html: each run, the history and a comparison, from RUNS (default: the whole store).

    RUNS are result files or store names (latest, latest~N). The page inlines its charts' JavaScript
    and data: it opens from file:// and makes no network request.
    """
    err = Console(stderr=True)
    try:
        path, count = _write(runs, Path(out_dir), baseline, dataset, last, results_dir, err)
    except CnnbenchError as exc:  # also when called on its own, outside the cnnbench group
        err.print(Text.assemble(("error:", "red"), " ", literal(str(exc))), highlight=False, soft_wrap=True)
        click.get_current_context().exit(exc.exit_code)
    size = path.stat().st_size
    click.echo(
        f"wrote {path} ({count} run{'s' if count != 1 else ''}, {size / 1024:,.0f} KB); open {path.resolve().as_uri()}"
    )


def _write(
    runs: tuple[str, ...],
    out_dir: Path,
    baseline: str | None,
    dataset: str | None,
    last: int | None,
    results_dir: str | None,
    err: Console,
) -> tuple[Path, int]:
    from cnnbench.html import write_report

    if last is not None and last < 1:
        raise UsageError(f"--last must be at least 1, got {last}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output {out_dir} is a file; give a folder")
    if runs:
        stored, skipped = history.load_runs([results.resolve(name, results_dir) for name in runs], strict=True)
    else:
        files = history.store_files(results_dir)
        if not files:
            raise UsageError(
                f"no runs in {results.results_dir(results_dir)}; run 'cnnbench run' first or name result files"
            )
        stored, skipped = history.load_runs(files)
    for reason in skipped:
        err.print(skipped_line(reason), highlight=False, soft_wrap=True)
    if dataset:
        stored = [run for run in stored if run.result.data.dataset == dataset]
        if not stored:
            raise UsageError(f"no readable run on dataset {dataset!r}")
    if not stored:
        raise UsageError("no readable run to report")
    if last:
        stored = stored[-last:]
    base = None
    if baseline:
        base_path = results.resolve(baseline, results_dir)
        base = (results.load(base_path), base_path.name)
    path = write_report(
        [run.result for run in stored],
        out_dir,
        names=[run.path.name for run in stored],
        baseline=base[0] if base else None,
        baseline_name=base[1] if base else "baseline",
    )
    return path, len(stored)
