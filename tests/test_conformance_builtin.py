"""Every built-in backend runs the very conformance kit a third-party plugin author runs.

Each runs it in its own test file (tests/test_backend_<name>.py: a ``BackendConformance`` subclass,
then only what is specific to that backend), so a framework is imported only where it is tested
and each file runs alone. This file checks that none is missing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cnnbench.plugins import load_registry

BUILTIN_DISTRIBUTION = "cnnbench"
TESTS = Path(__file__).resolve().parent


def builtin_backends() -> list[str]:
    registry = load_registry()
    return [name for name, r in sorted(registry.backends.items()) if r.plugin.distribution == BUILTIN_DISTRIBUTION]


def test_builtin_backends_are_registered():
    names = builtin_backends()
    assert {"torch", "tf", "keras", "jax"} <= set(names), f"built-in backends registered by cnnbench: {names}"


@pytest.mark.parametrize("name", builtin_backends())
def test_every_builtin_backend_runs_the_kit_in_its_test_file(name):
    path = TESTS / f"test_backend_{name}.py"
    assert path.is_file(), f"{path.name} is missing: every built-in backend has its own test file"
    classes = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)]
    kits = [cls.name for cls in classes if any(getattr(base, "id", None) == "BackendConformance" for base in cls.bases)]
    assert kits, f"{path.name} has no BackendConformance subclass: the built-ins pass the same kit as any plugin"
