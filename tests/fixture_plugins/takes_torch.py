"""A third-party plugin registering a well-formed backend under the built-in name 'torch'.

Plain hook, no tryfirst/trylast: only the loading order decides who gets the name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stub_items import StubBackend

from cnnbench import hookimpl


@hookimpl
def register_backends(register: Callable[[Any], None]) -> None:
    register(StubBackend("torch", framework="Not PyTorch"))
