"""``cnnbench scale``: data-parallel runs and the scaling report (``run --devices`` does the same runs).

One ordinary run (saved like any run) per device count; the report compares them per framework.
``--devices N`` measures 1, 2, 4 ... N devices; ``--devices 1,3`` exactly those counts. The runs
themselves are ``common.run_device_counts``, shared with ``run``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from cnnbench import results
from cnnbench.commands.common import RunParams, build_configs, print_scaling, run_device_counts, run_options


@click.command("scale")
@run_options
@click.option(
    "--from",
    "from_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Report saved runs (one per device count) instead of running; repeatable.",
)
def scale_command(from_files: tuple[str, ...], **options: Any) -> None:
    """Data-parallel scaling: a run per device count (--devices, default 1,2), then speed-up and efficiency.

    Exit status as for run: 0 ok, 2 bad input, 3 a backend failed at some count, 4 a run not saved where asked.
    """
    if from_files:
        print_scaling(sorted((results.load(path) for path in from_files), key=lambda r: r.train.devices))
        return
    params = RunParams.from_options(options)
    params = replace(params, devices=params.devices or "1,2")
    train, data = build_configs(params)
    run_device_counts(params, train, data)


command: click.Command = scale_command
