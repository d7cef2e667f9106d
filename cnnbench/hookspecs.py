"""Hook specifications: the only ways a plugin adds to cnnbench.

Built-in backends and datasets use these very hooks, registered through the ``cnnbench``
entry-point group exactly as a third-party package would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from cnnbench.backend import Backend
    from cnnbench.datasets.base import Dataset

PROJECT = "cnnbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register: Callable[["Backend"], None]) -> None:
    """Register framework backends.

    :param register: call ``register(backend)`` once per ``cnnbench.backend.Backend`` instance.
        Names must be unique across all plugins; a duplicate is reported and skipped.
    """


@hookspec
def register_datasets(register: Callable[["Dataset"], None]) -> None:
    """Register datasets.

    :param register: call ``register(dataset)`` once per ``cnnbench.datasets.Dataset`` instance.
        Names must be unique across all plugins; a duplicate is reported and skipped.
    """
