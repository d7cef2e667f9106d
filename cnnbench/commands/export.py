"""``cnnbench export RESULT --format ...``: a stored run in another tool's format."""

from __future__ import annotations

from pathlib import Path

import click

from cnnbench import results
from cnnbench.errors import UsageError
from cnnbench.exporters import DIRECTIONS, FORMATS, export


@click.command("export")
@click.argument("result", default="latest")
@click.option("--format", "-F", "fmt", type=click.Choice(FORMATS), required=True, help="Output format.")
@click.option(
    "--direction",
    type=click.Choice(DIRECTIONS),
    default="bigger",
    show_default=True,
    help="github-action-benchmark only: throughput and accuracy (tool customBiggerIsBetter) "
    "or first-epoch time and memory (customSmallerIsBetter).",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to this file instead of stdout."
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Result store for names like latest~1 [$CNNBENCH_RESULTS_DIR or ./results].",
)
def export_command(result: str, fmt: str, direction: str, output: str | None, results_dir: str | None) -> None:
    """Export RESULT (a file, a store name or latest / latest~N; default latest).

    pytest-benchmark: JSON for `pytest-benchmark compare` and github-action-benchmark's pytest tool;
    github-action-benchmark: its custom*IsBetter JSON; markdown: a CI job summary; csv: one row per
    framework and repeat.
    """
    text = export(results.load(results.resolve(result, results_dir)), fmt, direction)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    try:
        Path(output).write_text(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output}", err=True)


command: click.Command = export_command
