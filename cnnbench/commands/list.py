"""``cnnbench list``: registered backends and datasets, the plugin providing each, and whether each is usable."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from cnnbench.commands.common import console
from cnnbench.config import DataConfig
from cnnbench.plugins import load_registry


@click.command("list")
def list_command() -> None:
    """Registered backends and datasets, the plugin providing each, and whether each is usable."""
    registry = load_registry()
    backends = Table(title="Backends", title_justify="left")
    for column in ("name", "framework", "variants", "version", "plugin", "status"):
        backends.add_column(column, overflow="fold")
    for name in sorted(registry.backends):
        registered = registry.backends[name]
        backend = registered.item
        reason = _safe(backend.unavailable_reason)
        plugin = registered.plugin
        backends.add_row(
            name, backend.framework, ", ".join(backend.variants) or "-", _safe(backend.framework_version) or "-",
            f"{plugin.name} ({plugin.distribution} {plugin.version})".strip(),
            "[green]available[/green]" if not reason else f"[dim]unavailable: {escape(reason)}[/dim]",
        )
    console.print(backends)
    datasets = Table(title="Datasets", title_justify="left")
    for column in ("name", "shape", "classes", "plugin", "location"):
        datasets.add_column(column, overflow="fold")
    for name in sorted(registry.datasets):
        registered = registry.datasets[name]
        dataset = registered.item
        status = _safe(partial(dataset.status, DataConfig(dataset=name))) or {}
        datasets.add_row(
            name, "x".join(map(str, dataset.input_shape)), str(dataset.num_classes),
            f"{registered.plugin.name} ({registered.plugin.distribution} {registered.plugin.version})".strip(),
            str(status.get("location", "?")),
        )
    console.print(datasets)
    broken = [p for p in registry.plugins if p.status != "ok"]
    if broken:
        table = Table(title="Plugins not loaded", title_justify="left")
        for column in ("plugin", "module", "status"):
            table.add_column(column, overflow="fold")
        for plugin in broken:
            table.add_row(plugin.name, plugin.module, f"[red]{plugin.status}[/red]: {escape(plugin.error)}")
        console.print(table)


def _safe(func: Callable[[], Any]) -> Any:
    """Call a plugin's method; a plugin bug shows as text instead of crashing the listing."""
    try:
        return func()
    except Exception as exc:  # noqa: BLE001  (any plugin bug)
        return f"error: {type(exc).__name__}: {exc}"


command: click.Command = list_command
