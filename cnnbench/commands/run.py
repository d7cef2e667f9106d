"""``cnnbench run``: train and evaluate the model (``--model``) in each framework; ``--devices``: a scaling run."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.text import Text

from cnnbench import report
from cnnbench.commands.common import (
    NOT_FAILURES,
    RunParams,
    build_configs,
    console,
    execute_run,
    not_saved,
    run_device_counts,
    run_options,
    write_report_if_asked,
)
from cnnbench.errors import ExitCode


@click.command("run")
@run_options
@click.option("--preset", default=None, help="Start from a named preset (see 'cnnbench presets'); flags override it.")
def run_command(preset: str | None, **options: Any) -> None:
    """Train and evaluate the model (the LeNet, or --model) in each framework; print a table and save a result JSON.

    Exit status: 0 ok, 2 bad input (nothing run), 3 a backend failed, timed out or diverged,
    4 not saved where asked (saved to a named fallback), 128+N stopped by signal N (130 for Ctrl-C).
    """
    from cnnbench import presets

    params = RunParams.from_options(options)
    chosen = presets.get(preset) if preset else None
    train, data = build_configs(params, chosen.train if chosen else None, chosen.data if chosen else None)
    if params.devices:  # data-parallel runs and the scaling report
        run_device_counts(params, train, data, preset)
        return
    result, path = execute_run(params, train, data, preset=preset)
    if params.plot:
        from cnnbench.plots import plot_runs

        plotted = plot_runs([(preset or data.dataset, result)], params.plot)
        console.print(Text.assemble("plot written to ", report.literal(plotted)))
    write_report_if_asked(params, result)
    if not_saved(params, path):  # before a failed row: the file CI reads is not where it looks
        sys.exit(ExitCode.NOT_SAVED)
    if any(row.status not in NOT_FAILURES for row in result.backends):
        sys.exit(ExitCode.BACKEND_FAILED)


command: click.Command = run_command
