"""Calling a backend from a check: an exception becomes a failure that names the call and the likely cause."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cnnbench.conformance.diagnose import likely_cause
from cnnbench.spec import ModelSpec

T = TypeVar("T")


class BackendCallFailed(Exception):
    """A backend method raised inside a check: the checks that need its result cannot run."""

    def __init__(self, call: str, error: BaseException, spec: ModelSpec | None = None) -> None:
        text = str(error).strip()
        first = text.splitlines()[0] if text else ""
        cause = likely_cause(spec, call, error)
        detail = f"{call} raised {type(error).__name__}: {first}"[:300]
        self.call, self.error = call, error
        self.detail = detail + (f"; likely cause: {cause}" if cause else "")
        super().__init__(self.detail)


def call(what: str, func: Callable[..., T], *args: Any, spec: ModelSpec | None = None) -> T:
    """``func(*args)``; any exception from the backend becomes ``BackendCallFailed`` naming ``what``."""
    try:
        return func(*args)
    except BackendCallFailed:
        raise
    except Exception as exc:
        raise BackendCallFailed(what, exc, spec) from exc
