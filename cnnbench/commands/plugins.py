"""``cnnbench plugins``: every plugin found, where it comes from, what it adds, and whether it works.

Built on ``cnnbench.plugins.load_registry``, so it shows exactly what ``run`` would see,
including plugins that were disabled or failed to load. Listing never imports a framework:
availability comes from each backend's ``unavailable_reason()``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click
from rich.table import Table

from cnnbench.backend import BackendOption
from cnnbench.backend_options import declared_options
from cnnbench.commands.common import backend_options_table, console
from cnnbench.plugins import ALLOW_ENV, BLOCK_ENV, EXTRA_MODULES_ENV, PluginRecord, Registry, load_registry
from cnnbench.report import literal

STATUS_STYLE = {"ok": "green", "unavailable": "yellow", "broken": "red", "disabled": "dim"}


def _unavailable_reason(backend: Any) -> tuple[str | None, str | None]:
    """(reason, error): a plugin bug in ``unavailable_reason`` is reported, never raised."""
    try:
        return backend.unavailable_reason(), None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001  (any plugin bug, SystemExit included)
        return None, f"{type(exc).__name__}: {exc}"


def plugin_status(record: PluginRecord, registry: Registry) -> tuple[str, str]:
    """(status, detail): ok, unavailable (every backend it registers is), broken, or disabled."""
    if record.status != "ok":
        detail = record.error.removeprefix("disabled ") if record.status == "disabled" else record.error
        return record.status, detail
    backends = sorted((name, r.item) for name, r in registry.backends.items() if r.plugin is record)
    unavailable: list[str] = []
    for name, backend in backends:
        reason, error = _unavailable_reason(backend)
        if error:
            return "broken", f"{name}.unavailable_reason() raised {error}"
        if reason:
            unavailable.append(f"{name}: {reason}" if len(backends) > 1 else reason)
    if backends and len(unavailable) == len(backends):
        return "unavailable", "; ".join(unavailable)
    return "ok", ("unavailable " + "; ".join(unavailable)) if unavailable else ""


def describe(registry: Registry) -> list[dict[str, Any]]:
    """One plain dict per plugin, in load order (what ``--json`` prints)."""
    rows = []
    for record in registry.plugins:
        status, detail = plugin_status(record, registry)
        rows.append(
            {
                "name": record.name,
                "distribution": record.distribution,
                "version": record.version,
                "module": record.module,
                "hooks": list(record.hooks),
                "backends": sorted(name for name, r in registry.backends.items() if r.plugin is record),
                "datasets": sorted(name for name, r in registry.datasets.items() if r.plugin is record),
                "models": sorted(name for name, r in registry.models.items() if r.plugin is record),
                "options": {
                    name: [_option(option) for option in declared_options(r.item)]
                    for name, r in sorted(registry.backends.items())
                    if r.plugin is record and declared_options(r.item)
                },
                "status": status,
                "detail": detail,
            }
        )
    return rows


def _option(option: BackendOption) -> dict[str, Any]:
    """A declared backend option as plain JSON."""
    return {
        "key": option.key,
        "values": option.describe_values(),
        "default": option.describe_default(),
        "help": option.help,
    }


def _environment() -> dict[str, str]:
    names = (ALLOW_ENV, BLOCK_ENV, EXTRA_MODULES_ENV)
    return {name: os.environ[name] for name in names if os.environ.get(name, "").strip()}


@click.command("plugins")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    default=False,
    help="Print JSON (plugins and the plugin environment variables) instead of a table.",
)
def plugins_command(as_json: bool) -> None:
    """Every plugin found: name, distribution and version, module, hooks, what it registers, status.

    \b
    Status: ok | unavailable: reason (loaded, but its frameworks cannot run here)
            | broken: error (import or registration failed) | disabled (by a variable below).
    \b
    Environment:
      CNNBENCH_PLUGINS=a,b          load only these entry-point plugins (allow-list)
      CNNBENCH_DISABLE_PLUGINS=a,b  never load these (block-list)
      CNNBENCH_PLUGIN_MODULES=m,n   also load these importable modules as plugins
    """
    registry = load_registry()
    rows = describe(registry)
    if as_json:
        click.echo(json.dumps({"plugins": rows, "environment": _environment()}, indent=2))
        return
    table = Table(title="Plugins", title_justify="left")
    for column in ("name", "distribution", "module", "hooks", "registers", "status"):
        table.add_column(column, overflow="fold")
    for row in rows:
        distribution = f"{row['distribution']} {row['version']}".strip() or "-"
        registers = (
            "; ".join(f"{kind}: {', '.join(row[kind])}" for kind in ("backends", "datasets", "models") if row[kind])
            or "-"
        )
        style = STATUS_STYLE.get(row["status"], "")
        status = row["status"] + (f": {row['detail']}" if row["detail"] else "")
        cells = (row["name"], distribution, row["module"], ", ".join(row["hooks"]) or "-", registers)
        table.add_row(*(literal(cell) for cell in cells), literal(status, style))  # no markup in plugin strings
    console.print(table)
    options = backend_options_table(registry)
    if options is not None:
        console.print(options)
    for name, value in _environment().items():
        console.print(literal(f"{name}={value}", "dim"))
    if not rows:
        console.print("no plugins found: is cnnbench installed (pip install -e .)?")


command: click.Command = plugins_command
