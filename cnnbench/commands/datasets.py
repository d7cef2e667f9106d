"""``cnnbench datasets``: each registered dataset, where it was found (or that it is missing), its
size and whether its files were verified; ``--verify`` / ``--download`` check and cache them now."""

from __future__ import annotations

from typing import Any

import click
from rich.console import JustifyMethod
from rich.table import Table
from rich.text import Text

from cnnbench.commands.common import console, err_console
from cnnbench.config import DataConfig
from cnnbench.datasets.locate import CACHE_DIR_ENV, cache_root
from cnnbench.errors import CnnbenchError, DatasetError
from cnnbench.plugins import load_registry
from cnnbench.report import literal


def _size(size_bytes: int | None) -> str:
    if not size_bytes:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def _images(dataset: Any, status: dict[str, Any]) -> str:
    n_train, n_test = status.get("n_train", dataset.n_train), status.get("n_test", dataset.n_test)
    return f"{n_train:,} / {n_test:,}" if n_train and n_test else "-"


def _verified(status: dict[str, Any], failure: str | None) -> Text:
    if failure:
        return Text.assemble(("failed", "red"), " (below)")
    if status.get("origin") == "generated":
        return Text("generated", style="dim")
    if not status.get("available"):
        return Text("-")
    verified = status.get("verified")
    if verified is True:
        return Text.assemble(("yes", "green"), " (sha256, cached)")
    if verified is False:
        return Text("no checksums declared", style="yellow")
    return Text("not yet (on first load)", style="dim")


def _location(status: dict[str, Any]) -> Text:
    """Where the files are: a path or a plugin's text, shown literally."""
    if status.get("available"):
        origin = status.get("origin")
        shown = literal(f" ({origin})", "dim") if origin and origin != "generated" else ""
        return Text.assemble(literal(status.get("location", "?")), shown)
    return literal(status.get("location") or "missing", "yellow")


@click.command("datasets")
@click.argument("names", nargs=-1)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder searched first (holding e.g. mnist/ and cifar10/).",
)
@click.option("--offline", is_flag=True, default=False, help="Never download (also $CNNBENCH_OFFLINE=1).")
@click.option(
    "--verify",
    is_flag=True,
    default=False,
    help="Load each dataset found now: check every sha256, parse and fill the cache. Never downloads.",
)
@click.option(
    "--download", is_flag=True, default=False, help="Like --verify, and download missing datasets into the cache."
)
def datasets_command(names: tuple[str, ...], data_dir: str | None, offline: bool, verify: bool, download: bool) -> None:
    """Where each dataset (or each of NAMES) is, its size, and whether it was verified."""
    registry = load_registry()
    every = [registry.datasets[name] for name in sorted(registry.datasets)]
    chosen = [registry.dataset(name) for name in names] if names else every
    table = Table(title="Datasets", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("name", "left"),
        ("train / test", "right"),
        ("shape", "left"),
        ("classes", "right"),
        ("location", "left"),
        ("size", "right"),
        ("verified", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold")
    failed: list[str] = []
    notes: list[tuple[str, Text]] = []
    for registered in chosen:
        dataset = registered.item
        config = DataConfig(dataset=dataset.name, data_dir=data_dir, offline=offline or not download)
        failure = None
        try:
            status = dataset.status(config)
            wanted = (verify or download) and status.get("origin") != "generated"
            if wanted and (status.get("available") or download):
                dataset.load(config)
                status = dataset.status(config)
        except CnnbenchError as exc:
            failure = str(exc).removeprefix(f"{dataset.name}: ")
            failed.append(dataset.name)
            status = _safe_status(dataset, config)
        except Exception as exc:  # noqa: BLE001  a plugin's bug shows in its row instead of ending the listing
            failure = f"{type(exc).__name__}: {exc}"
            failed.append(dataset.name)
            status = {}
        if failure:
            notes.append((dataset.name, literal(failure, "red")))
        elif not status.get("available") and status.get("reason"):
            notes.append((dataset.name, literal(status["reason"])))
        table.add_row(
            literal(dataset.name), _images(dataset, status), "x".join(map(str, dataset.input_shape)),
            str(dataset.num_classes), _location(status), _size(status.get("size_bytes")), _verified(status, failure),
        )  # fmt: skip
    console.print(table)
    for name, note in notes:
        err_console.print(Text.assemble(literal(name, "bold"), ": ", note), highlight=False, soft_wrap=True)
    err_console.print(
        literal(f"cache: {cache_root()} (set ${CACHE_DIR_ENV} to move it)"), highlight=False, soft_wrap=True
    )
    if failed:
        raise DatasetError(f"{len(failed)} dataset(s) failed: {', '.join(failed)} (reasons in the table)")


def _safe_status(dataset: Any, config: DataConfig) -> dict[str, Any]:
    try:
        status: dict[str, Any] = dataset.status(config)
        return status
    except Exception:  # noqa: BLE001  a plugin's bug: no status, the row says why
        return {}


command: click.Command = datasets_command
