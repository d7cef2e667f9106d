"""Shared fixtures: where the real data is, an isolated result store, test plugins for workers,
and the example NumPy backend that lets the core tests run with no framework installed."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cnnbench.config import TrainConfig
from cnnbench.frameworks import TENSORFLOW

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

# TensorFlow in this process runs the kernels a worker runs (oneDNN on x86), set before anything imports it.
os.environ.update(TENSORFLOW.process_environment(TrainConfig()))

REPO = Path(__file__).resolve().parent.parent
FIXTURE_PLUGINS = Path(__file__).resolve().parent / "fixture_plugins"
EXAMPLE_PLUGIN = REPO / "examples" / "cnnbench-numpy"


def real_data_dir() -> Path | None:
    """$CNNBENCH_DATA_DIR, else ../shared/data beside the checkout; None when absent."""
    candidates = [os.environ.get("CNNBENCH_DATA_DIR"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate, "mnist").is_dir():
            return Path(candidate)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`@pytest.mark.requires("torch")` skips, naming what is missing, without importing it (workers do that)."""
    found: dict[str, bool] = {}
    for item in items:
        for marker in item.iter_markers("requires"):
            missing = [m for m in marker.args if not found.setdefault(m, importlib.util.find_spec(m) is not None)]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(missing)}, not installed here"))


def prepend_path(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` importable here and in the worker processes this test starts."""
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real datasets not found (set CNNBENCH_DATA_DIR or place them in ../shared/data)")
    return found


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("CNNBENCH_RESULTS_DIR", str(folder))
    return folder


@pytest.fixture
def fixture_plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make tests/fixture_plugins importable here and in worker processes; returns a setter
    for CNNBENCH_PLUGIN_MODULES (comma-separated module names)."""
    prepend_path(monkeypatch, FIXTURE_PLUGINS)

    def use(*modules: str) -> None:
        monkeypatch.setenv("CNNBENCH_PLUGIN_MODULES", ",".join(modules))

    return use


@pytest.fixture(scope="session")
def numpy_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in which examples/cnnbench-numpy is installed as `pip install -e` would leave it: the
    package (a link to the example's source) and a dist-info whose entry points come from its pyproject."""
    project = tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("numpy-plugin-site")
    (site / "cnnbench_numpy").symlink_to(EXAMPLE_PLUGIN / "cnnbench_numpy", target_is_directory=True)
    info = site / f"cnnbench_numpy-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = "".join(f"{name} = {target}\n" for name, target in project["entry-points"]["cnnbench"].items())
    (info / "entry_points.txt").write_text(f"[cnnbench]\n{points}")
    (info / "top_level.txt").write_text("cnnbench_numpy\n")
    return site


@pytest.fixture
def numpy_backend(numpy_plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The example pure-NumPy backend, found through its entry point here and in workers; returns its name.

    Core tests train on it (as llm's tests use a mock model), so they need no framework installed."""
    prepend_path(monkeypatch, numpy_plugin_site)
    return "numpy"
