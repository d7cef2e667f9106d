"""``cnnbench reproduce``: every preset in every framework, published vs measured accuracy side by side."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import click
from rich.text import Text

from cnnbench import report
from cnnbench.commands.common import (
    NOT_FAILURES,
    RunParams,
    build_configs,
    console,
    execute_run,
    model_option,
    not_saved,
)
from cnnbench.errors import ExitCode
from cnnbench.results import RunResult


@click.command("reproduce")
@click.option("--frameworks", "-f", default="all", show_default=True, help="Comma list of backends, or 'all'.")
@model_option()
@click.option("--presets", "preset_names", default="all", show_default=True, help="Comma list of presets, or 'all'.")
@click.option("--quick", is_flag=True, help="Shortened runs for CI: fewer epochs, seeded subsets (the table says so).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files.")
@click.option("--offline", is_flag=True, default=False, help="Never download datasets.")
@click.option("--threads", type=int, default=None, help="Intra-op threads per framework [all cores].")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds before a backend's worker is killed.")
@click.option("--results-dir", type=click.Path(file_okay=False), default=None, help="Where result JSON files go.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write curves and throughput bars for every preset to FILE.png.",
)
def reproduce_command(
    frameworks: str,
    model: str | None,
    preset_names: str,
    quick: bool,
    data_dir: str | None,
    offline: bool,
    threads: int | None,
    timeout_s: float | None,
    results_dir: str | None,
    plot: str | None,
) -> None:
    """Run the chapter's experiments in every framework; published vs measured accuracy side by side.

    Exit status: 0 ok, 2 bad input, 3 a backend failed in some preset, 4 a preset's result not saved where
    asked, 128+N stopped by signal N.
    """
    from cnnbench import presets

    chosen = presets.parse(preset_names)
    # Every preset is evaluated after each epoch: the optional plot of all presets is drawn at the end.
    params = RunParams(
        frameworks=frameworks,
        model=model,
        threads=threads,
        data_dir=data_dir,
        offline=offline,
        timeout_s=timeout_s,
        results_dir=results_dir,
        evaluate_each_epoch=True,
    )
    runs: list[tuple[presets.Preset, RunResult]] = []
    unsaved = False
    started = time.perf_counter()
    for preset in chosen:
        train, data = build_configs(params, *preset.configs(quick))
        if model:  # the chapter's dropout belongs to its LeNet: another model takes its own default
            train = replace(train, dropout=None)
        console.rule(f"{preset.name}{' (quick)' if quick else ''}")
        result, path = execute_run(params, train, data, preset=preset.name, show=False)
        unsaved = unsaved or not_saved(params, path)
        runs.append((preset, result))
    console.print(report.reproduce_table(runs, quick, time.perf_counter() - started))
    if plot:
        from cnnbench.plots import plot_runs

        plotted = plot_runs([(p.name, r) for p, r in runs], plot)
        console.print(Text.assemble("plot written to ", report.literal(plotted)))
    if unsaved:  # before a failed row, as in run: the files CI reads are not where it looks
        sys.exit(ExitCode.NOT_SAVED)
    if any(row.status not in NOT_FAILURES for _, result in runs for row in result.backends):
        sys.exit(ExitCode.BACKEND_FAILED)


command: click.Command = reproduce_command
