"""``cnnbench presets``: the reference chapter's experiments as named presets."""

from __future__ import annotations

import click
from rich.table import Table

from cnnbench.commands.common import console


@click.command("presets")
def presets_command() -> None:
    """The reference chapter's experiments, as named presets for 'run --preset' and 'reproduce'."""
    from cnnbench import presets

    table = Table(title="Presets (the reference chapter's results table)", title_justify="left")
    for column in ("preset", "published", "optimizer", "epochs", "init", "dropout", "data", "what"):
        table.add_column(column, overflow="fold")
    for p in presets.PRESETS.values():
        data = p.data.dataset + (f", {p.data.validation:,} held out" if p.data.validation else "")
        table.add_row(
            p.name,
            f"{100 * p.published_accuracy:.2f}% ({p.published_with})",
            f"{p.train.optimizer} {p.train.learning_rate:g}",
            str(p.train.epochs),
            p.train.init,
            f"{p.train.dropout:g}" if p.train.dropout else "-",
            data,
            p.description + (f". {p.notes}" if p.notes else ""),
        )
    console.print(table)


command: click.Command = presets_command
