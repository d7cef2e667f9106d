"""Hook specifications: the only ways a plugin adds to cnnbench.

Built-in backends, datasets and models use these very hooks, registered through the ``cnnbench``
entry-point group exactly as a third-party package would. ``cnnbench.plugins`` calls each
plugin's hooks on their own, in load order (built-ins first; ``tryfirst``/``trylast`` change
nothing), and validates every item before it counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from cnnbench.backend import Backend
    from cnnbench.datasets.base import Dataset
    from cnnbench.models import Model

PROJECT = "cnnbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register framework backends.

    :param register: call ``register(backend)`` once per ``cnnbench.backend.Backend`` instance,
        during this call only; return nothing. The first plugin to register a name keeps it. An item
        that is malformed (``cnnbench.plugins.backend_problems``) or whose name is taken, or a hook
        that raises, marks the plugin broken with the reason, and none of its items is registered.
    """


@hookspec
def register_datasets(register: Callable[[Dataset], None]) -> None:
    """Register datasets.

    :param register: call ``register(dataset)`` once per ``cnnbench.datasets.Dataset`` instance,
        during this call only; return nothing. Same rules as ``register_backends``
        (``cnnbench.plugins.dataset_problems``).
    """


@hookspec
def register_models(register: Callable[[Model], None]) -> None:
    """Register networks.

    :param register: call ``register(model)`` once per ``cnnbench.models.Model``, during this call
        only; return nothing. Same rules as ``register_backends`` (``cnnbench.plugins.model_problems``:
        the model must build a valid spec for a 28x28x1 and a 32x32x3 input of 10 classes).
    """
