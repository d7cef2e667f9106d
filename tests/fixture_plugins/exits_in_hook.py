"""A plugin that exits from inside its registration hook: broken, and the process goes on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cnnbench import hookimpl


@hookimpl
def register_backends(register: Callable[[Any], None]) -> None:
    raise SystemExit("this plugin exits while registering")
