"""Shared fixtures: where the real data is, an isolated result store, test plugins for workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_PLUGINS = Path(__file__).resolve().parent / "fixture_plugins"


def real_data_dir() -> Path | None:
    """$CNNBENCH_DATA_DIR, else ../shared/data beside the checkout; None when absent."""
    candidates = [os.environ.get("CNNBENCH_DATA_DIR"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate, "mnist").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real datasets not found (set CNNBENCH_DATA_DIR or place them in ../shared/data)")
    return found


@pytest.fixture
def results_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("CNNBENCH_RESULTS_DIR", str(folder))
    return folder


@pytest.fixture
def fixture_plugins(monkeypatch):
    """Make tests/fixture_plugins importable here and in worker processes; returns a setter
    for CNNBENCH_PLUGIN_MODULES (comma-separated module names)."""
    monkeypatch.syspath_prepend(str(FIXTURE_PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FIXTURE_PLUGINS), os.environ.get("PYTHONPATH")])))

    def use(*modules: str) -> None:
        monkeypatch.setenv("CNNBENCH_PLUGIN_MODULES", ",".join(modules))

    return use
