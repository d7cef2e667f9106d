"""Every ``cnnbench`` command, one module each, registered in one place: ``COMMANDS`` below.

A command module ``cnnbench/commands/NAME.py`` defines a module-level ``command`` (a ``click.Command``);
``cnnbench/cli.py`` imports each module named in ``COMMANDS`` and adds its ``command`` to the group.
Adding a command is one line: its module name in ``COMMANDS``. Command modules share the console, the
``run`` options (typed as ``RunParams``) and the run helpers through ``common``, never through each other.
"""

from __future__ import annotations

#: Modules under cnnbench/commands/ whose ``command`` the CLI registers, in registration order.
COMMANDS: tuple[str, ...] = (
    "run",
    "presets",
    "reproduce",
    "list",
    "plugins",
    "scale",
    "check",
    "datasets",
    "compare",
    "ab",
    "export",
    "history",
    "report",
    "ceiling",
)
