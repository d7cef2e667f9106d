"""The built-in backends run the very conformance kit a third-party plugin author runs.

Parametrized over every backend registered by the cnnbench distribution itself, so a new
built-in backend joins automatically; an unavailable framework is skipped with its reason.
"""

from __future__ import annotations

import pytest

from cnnbench.plugins import load_registry
from cnnbench.testing import BackendConformance

BUILTIN_DISTRIBUTION = "cnnbench"


def builtin_backends():
    registry = load_registry()
    return [r.item for _, r in sorted(registry.backends.items()) if r.plugin.distribution == BUILTIN_DISTRIBUTION]


def test_builtin_backends_are_registered():
    names = [backend.name for backend in builtin_backends()]
    assert "torch" in names, f"the torch backend is not registered by the cnnbench distribution (found {names})"


class TestBuiltinBackend(BackendConformance):
    @pytest.fixture(scope="class", params=builtin_backends(), ids=lambda backend: backend.name)
    def conformance_backend(self, request):
        return request.param
