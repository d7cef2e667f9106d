"""Packaging stays consistent: one version, pins that CI and the hooks share, documented markers."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import cnnbench

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    """constraints.txt as {name: exact version} for the `name==version` lines."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (REPO / "constraints.txt").read_text(), flags=re.M)
    return {name.lower(): version for name, version in found}


def test_the_version_is_written_once():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cnnbench.__version__"}
    assert importlib.metadata.version("cnnbench") == cnnbench.__version__


def test_the_changelog_has_unreleased_and_the_current_version():
    headings = re.findall(r"^## \[([^\]]+)\]", (REPO / "CHANGELOG.md").read_text(), flags=re.M)
    assert headings[0] == "Unreleased" and cnnbench.__version__ in headings


def test_ci_pins_the_tools_the_tests_and_hooks_depend_on():
    pinned = pins()
    assert {"pytest-benchmark", "ruff", "mypy"} <= set(pinned)
    hooks = (REPO / ".pre-commit-config.yaml").read_text()
    assert f"rev: v{pinned['ruff']}" in hooks, "the ruff pre-commit rev must match the ruff pin in constraints.txt"
    assert any(req.startswith("hypothesis") for req in PYPROJECT["project"]["optional-dependencies"]["test"])


def test_every_pytest_marker_is_documented_for_contributors():
    contributing = (REPO / "CONTRIBUTING.md").read_text()
    for marker in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]:
        name = re.match(r"\w+", marker).group()
        assert f"`{name}" in contributing, f"marker {name!r} is not explained in CONTRIBUTING.md"
