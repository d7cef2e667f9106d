"""``cnnbench list``: registered backends, models and datasets, the plugin providing each, and whether each is usable.

Every name, version, path and message here comes from a plugin, so each is shown literally (``report.literal``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from cnnbench.backend import model_unsupported_reason
from cnnbench.commands.common import backend_options_table, console
from cnnbench.config import DataConfig
from cnnbench.plugins import PluginRecord, Registry, load_registry
from cnnbench.report import literal
from cnnbench.spec import ModelSpec


@click.command("list")
def list_command() -> None:
    """Registered backends, models and datasets, the plugin providing each, whether each is usable, backend options."""
    registry = load_registry()
    backends = Table(title="Backends", title_justify="left")
    for column in ("name", "framework", "variants", "version", "plugin", "status"):
        backends.add_column(column, overflow="fold")
    for name in sorted(registry.backends):
        registered = registry.backends[name]
        backend = registered.item
        reason = _safe(backend.unavailable_reason)
        backends.add_row(
            literal(name),
            literal(backend.framework),
            literal(", ".join(backend.variants) or "-"),
            literal(_safe(backend.framework_version) or "-"),
            _plugin(registered.plugin),
            Text("available", style="green") if not reason else literal(f"unavailable: {reason}", "dim"),
        )
    console.print(backends)
    options = backend_options_table(registry)
    if options is not None:
        console.print(options)
    from cnnbench.modes import mode_rows

    modes = Table(title="Execution modes (-f NAME:MODE or NAME:VARIANT+MODE; --modes all)", title_justify="left")
    for column in ("mode", "backend options", "default", "what it runs"):
        modes.add_column(column, overflow="fold")
    for row in mode_rows(registry):  # plugin text: shown literally
        modes.add_row(*(literal(cell) for cell in row))
    if modes.rows:
        console.print(modes)
    datasets = Table(title="Datasets", title_justify="left")
    for column in ("name", "shape", "classes", "plugin", "location"):
        datasets.add_column(column, overflow="fold")
    for name in sorted(registry.datasets):
        registered = registry.datasets[name]
        dataset = registered.item
        status = _safe(partial(dataset.status, DataConfig(dataset=name)))
        location = status.get("location", "?") if isinstance(status, dict) else status
        datasets.add_row(
            literal(name),
            literal("x".join(map(str, dataset.input_shape))),
            literal(dataset.num_classes),
            _plugin(registered.plugin),
            literal(location),
        )
    console.print(datasets)
    console.print(models_table(registry))
    broken = [p for p in registry.plugins if p.status != "ok"]
    if broken:
        table = Table(title="Plugins not loaded", title_justify="left")
        for column in ("plugin", "module", "status"):
            table.add_column(column, overflow="fold")
        for plugin in broken:
            status = Text.assemble((plugin.status, "red"), ": ", literal(plugin.error))
            table.add_row(literal(plugin.name), literal(plugin.module), status)
        console.print(table)


#: The inputs the models table sizes each model for: MNIST's and CIFAR-10's.
MODEL_INPUTS = (((28, 28, 1), 10), ((32, 32, 3), 10))


def models_table(registry: Registry) -> Table:
    """Each model's parameters and training FLOPs for MNIST- and CIFAR-shaped inputs, and which backends lack it."""
    table = Table(title="Models (--model NAME)", title_justify="left")
    for column in ("name", "what it is", "input", "parameters", "MFLOPs/sample (fwd)", "layers", "not on", "plugin"):
        table.add_column(column, overflow="fold")
    for name in sorted(registry.models):
        registered = registry.models[name]
        model = registered.item
        for index, (shape, classes) in enumerate(MODEL_INPUTS):
            spec = _safe(partial(model.spec, shape, classes))
            if not isinstance(spec, ModelSpec):
                table.add_row(literal(name), "", literal("x".join(map(str, shape))), literal(str(spec)), "", "", "", "")
                continue
            state = f" (+{spec.num_state:,} bn)" if spec.num_state else ""
            lacking = sorted(
                backend
                for backend, entry in registry.backends.items()
                if model_unsupported_reason(entry.item, spec) is not None
            )
            table.add_row(
                literal(name) if index == 0 else "",
                literal(model.description) if index == 0 else "",
                literal("x".join(map(str, shape))),
                literal(f"{spec.num_params:,}{state}"),
                literal(f"{spec.flops_forward / 1e6:,.1f}"),
                literal(str(len(spec.walk()))),
                literal(", ".join(lacking) or "-"),
                _plugin(registered.plugin) if index == 0 else "",
            )
    return table


def _plugin(plugin: PluginRecord) -> Text:
    """The plugin column: name (distribution version)."""
    return literal(f"{plugin.name} ({plugin.distribution} {plugin.version})".strip())


def _safe(func: Callable[[], Any]) -> Any:
    """Call a plugin's method; a plugin bug (SystemExit included) shows as text instead of ending the listing."""
    try:
        return func()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001  (any plugin bug)
        return f"error: {type(exc).__name__}: {exc}"


command: click.Command = list_command
