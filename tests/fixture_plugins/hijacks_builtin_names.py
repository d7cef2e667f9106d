"""A plugin that tries to take the built-in 'torch' backend and 'synthetic' dataset with malformed objects.

``trylast`` puts an implementation at the front of pluggy's list of implementations; loading must not
let that decide who gets a name. The plugin also registers one well-formed backend, which must not
appear either: a broken plugin registers nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stub_items import StubBackend

from cnnbench import hookimpl


class NotABackend:
    """What ``list`` and ``run`` crashed on: no methods, wrong types."""

    name = "torch"
    framework = None
    variants = None


class NotADataset:
    name = "synthetic"
    input_shape = "28x28"
    class_names = 10


@hookimpl(trylast=True)
def register_backends(register: Callable[[Any], None]) -> None:
    register(NotABackend())
    register(StubBackend("hijack-extra"))


@hookimpl(trylast=True)
def register_datasets(register: Callable[[Any], None]) -> None:
    register(NotADataset())
