"""``cnnbench scale`` and ``cnnbench run --devices``: data-parallel runs and the scaling report.

One ordinary run (saved like any run) per device count; the report compares them per framework.
``--devices N`` measures 1, 2, 4 ... N devices; ``--devices 1,3`` exactly those counts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import click

from cnnbench import distributed, results
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.plugins import load_registry
from cnnbench.results import OK, UNAVAILABLE, UNSUPPORTED, RunResult
from cnnbench.runner import parse_frameworks

#: Row statuses that do not make a run exit with 1: the backend could not run here, by design.
NOT_FAILURES = (OK, UNAVAILABLE, UNSUPPORTED)


def run_title(train: TrainConfig, data: DataConfig, where: distributed.Cluster) -> str:
    """The per-run table title, stating the global batch."""
    hosts = f"{where.num_hosts} hosts x " if where.multi_host else ""
    devices = f"{train.devices} device{'s' if train.devices != 1 else ''}"
    return (
        f"cnnbench: {data.dataset}, {train.optimizer} lr {train.learning_rate:g}, {hosts}{devices} x batch {train.batch_size} "
        f"= global batch {distributed.global_batch_size(train, where):,}, {train.epochs} epoch{'s' if train.epochs != 1 else ''}, "
        f"{train.threads} threads"
    )


def targets_for_count(params: dict, train: TrainConfig, counts: list[int], count: int) -> list[str]:
    """Backend ids to run at ``count``: the one-device baseline only for backends that scale at some other count."""
    registry = load_registry()
    targets = parse_frameworks(params["frameworks"], registry)
    if count != 1 or not any(c > 1 for c in counts):
        return [t.id for t in targets]
    kept = []
    for target in targets:
        backend = registry.backend(target.name).item
        others = [c for c in counts if c > 1]
        if backend.unavailable_reason() or any(backend.devices_unsupported_reason(target.variant, replace(train, devices=c)) is None for c in others):
            kept.append(target.id)
    return kept


def run_device_counts(params: dict, train: TrainConfig, data: DataConfig, preset: str | None = None, counts: list[int] | None = None) -> list[RunResult]:
    """A run per device count (each printed and saved), then the scaling table; exits 1 on a failed row."""
    from cnnbench.cli import console, execute_run

    where = distributed.cluster()
    counts = counts or distributed.parse_device_counts(params["devices"], where)
    train = replace(train, threads=train.threads or os.cpu_count() or 1)  # as run_benchmark resolves it
    runs: list[RunResult] = []
    for count in counts:
        train_n = replace(train, devices=count).validate()
        ids = targets_for_count(params, train_n, counts, count)
        if not ids:
            continue
        console.rule(f"{count} device{'s' if count != 1 else ''} per host" + (f", {where.describe()}" if where.multi_host else ""))
        result, _ = execute_run({**params, "frameworks": ",".join(ids)}, train_n, data, preset=preset, title=run_title(train_n, data, where))
        runs.append(result)
    print_scaling(runs)
    if params.get("plot"):
        from cnnbench.plots import plot_runs

        console.print(f"plot written to {plot_runs([(f'{r.train.devices} device(s)', r) for r in runs], params['plot'])}")
    if any(row.status not in NOT_FAILURES for run in runs for row in run.backends):
        sys.exit(1)
    return runs


def print_scaling(runs: list[RunResult]) -> None:
    from cnnbench.cli import console
    from cnnbench.scaling import SIMULATED_NOTE, scaling_table, simulated_devices_only

    if not runs:
        console.print("no run to report")
        return
    console.print(scaling_table(runs))
    if simulated_devices_only(runs):
        console.print(f"[dim]{SIMULATED_NOTE}[/dim]")


class WithRunOptions(click.Command):
    """A command that also takes every ``run`` option, looked up when first used: cnnbench.cli
    defines them and imports this module, so they cannot be imported while it loads."""

    _run_params: list[click.Parameter] | None = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self._run_params is None:
            from cnnbench.cli import run_options

            self._run_params = list(reversed(run_options(lambda **_: None).__click_params__))
        return [*self._run_params, *super().get_params(ctx)]


@click.command("scale", cls=WithRunOptions)
@click.option("--from", "from_files", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Report saved runs (one per device count) instead of running; repeatable.")
def scale_command(from_files: tuple[str, ...], **params) -> None:
    """Data-parallel scaling: a run per device count (--devices, default 1,2), then speed-up and efficiency."""
    from cnnbench.cli import build_configs

    if from_files:
        print_scaling(sorted((results.load(path) for path in from_files), key=lambda r: r.train.devices))
        return
    params["devices"] = params.get("devices") or "1,2"
    train, data = build_configs(params)
    run_device_counts(params, train, data)
