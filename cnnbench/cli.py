"""The ``cnnbench`` command line. Errors a user can cause end as one line and exit code 2.

The commands live in cnnbench/commands/, one module each; ``cnnbench.commands.COMMANDS`` says which.
Exit codes are ``cnnbench.errors.ExitCode`` (README "Exit codes").
"""

from __future__ import annotations

import importlib
from typing import Any

import click
from rich.text import Text

from cnnbench import __version__
from cnnbench.commands import COMMANDS
from cnnbench.commands.common import err_console
from cnnbench.errors import CnnbenchError, ExitCode
from cnnbench.report import literal


def print_error(message: str) -> None:
    """One ``error:`` line; the message quotes user input and file contents, so it is never read as markup."""
    err_console.print(Text.assemble(("error:", "red"), " ", literal(message)), highlight=False, soft_wrap=True)


class CnnbenchGroup(click.Group):
    """Turns project errors and click usage errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            print_error(exc.format_message())
            ctx.exit(ExitCode.USAGE)
        except CnnbenchError as exc:
            print_error(str(exc))
            ctx.exit(exc.exit_code)


@click.group(cls=CnnbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnbench")
def cli() -> None:
    """Train the same CNN (the chapter's LeNet, or --model) in several frameworks; compare accuracy and speed.

    \b
    Exit status: 0 ok, 1 a regression (compare, ab), 2 bad input, 3 a backend failed (run, scale, check),
    4 measured but not saved where asked (run, scale), 5 undecided in the time budget (ab),
    128+N interrupted by signal N (130 for Ctrl-C).
    """


for _name in COMMANDS:
    cli.add_command(importlib.import_module(f"cnnbench.commands.{_name}").command)


def main(argv: list[str] | None = None) -> None:
    """The console script (pyproject: ``cnnbench = "cnnbench.cli:main"``) and ``python -m cnnbench.cli``."""
    cli.main(args=argv, prog_name="cnnbench")


if __name__ == "__main__":
    main()
