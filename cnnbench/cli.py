"""The ``cnnbench`` command line. Errors a user can cause end as one line and exit code 2.

The commands live in cnnbench/commands/, one module each; ``cnnbench.commands.COMMANDS`` says which.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from cnnbench import __version__
from cnnbench.commands import COMMANDS
from cnnbench.commands.common import err_console
from cnnbench.errors import CnnbenchError


class CnnbenchGroup(click.Group):
    """Turns project errors and click usage errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            err_console.print(f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True)
            ctx.exit(2)
        except CnnbenchError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


@click.group(cls=CnnbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnbench")
def cli() -> None:
    """Train the same LeNet in several frameworks; compare accuracy and speed."""


for _name in COMMANDS:
    cli.add_command(importlib.import_module(f"cnnbench.commands.{_name}").command)


def main(argv: list[str] | None = None) -> None:
    """The console script (pyproject: ``cnnbench = "cnnbench.cli:main"``) and ``python -m cnnbench.cli``."""
    cli.main(args=argv, prog_name="cnnbench")


if __name__ == "__main__":
    main()
