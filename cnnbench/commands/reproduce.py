"""``cnnbench reproduce``: every preset in every framework, published vs measured accuracy side by side."""

from __future__ import annotations

import time

import click
from rich.text import Text

from cnnbench import report
from cnnbench.commands.common import RunParams, build_configs, console, execute_run
from cnnbench.results import RunResult


@click.command("reproduce")
@click.option("--frameworks", "-f", default="all", show_default=True, help="Comma list of backends, or 'all'.")
@click.option("--presets", "preset_names", default="all", show_default=True, help="Comma list of presets, or 'all'.")
@click.option("--quick", is_flag=True, help="Shortened runs for CI: fewer epochs, seeded subsets (the table says so).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files.")
@click.option("--offline", is_flag=True, default=False, help="Never download datasets.")
@click.option("--threads", type=int, default=None, help="Intra-op threads per framework [all cores].")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds before a backend's worker is killed.")
@click.option("--results-dir", type=click.Path(file_okay=False), default=None, help="Where result JSON files go.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write curves and throughput bars for every preset to FILE.png.")
def reproduce_command(
    frameworks: str, preset_names: str, quick: bool, data_dir: str | None, offline: bool, threads: int | None,
    timeout_s: float | None, results_dir: str | None, plot: str | None,
) -> None:
    """Run the chapter's experiments in every framework; published vs measured accuracy side by side."""
    from cnnbench import presets

    chosen = presets.parse(preset_names)
    # Every preset is evaluated after each epoch: the optional plot of all presets is drawn at the end.
    params = RunParams(frameworks=frameworks, threads=threads, data_dir=data_dir, offline=offline, timeout_s=timeout_s,
                       results_dir=results_dir, evaluate_each_epoch=True)
    runs: list[tuple[presets.Preset, RunResult]] = []
    started = time.perf_counter()
    for preset in chosen:
        train, data = build_configs(params, *preset.configs(quick))
        console.rule(f"{preset.name}{' (quick)' if quick else ''}")
        result, _ = execute_run(params, train, data, preset=preset.name, show=False)
        runs.append((preset, result))
    console.print(report.reproduce_table(runs, quick, time.perf_counter() - started))
    if plot:
        from cnnbench.plots import plot_runs

        plotted = plot_runs([(p.name, r) for p, r in runs], plot)
        console.print(Text.assemble("plot written to ", report.literal(plotted)))


command: click.Command = reproduce_command
