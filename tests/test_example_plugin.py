"""The example third-party plugin (examples/cnnbench-numpy), installed with pip like any plugin.

A copy of the example is pip-installed into a temporary target folder, which only the
subprocesses below put on their path: the entry point must be what finds it, and this
interpreter's environment is left untouched. Then the conformance kit runs on it in a
pytest subprocess, exactly as its author would run it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cnnbench-numpy"


def setuptools_builds_wheels() -> bool:
    """An offline build needs setuptools 70.1+ (built-in bdist_wheel) or the wheel package; a new venv may lack both."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict[str, Path]:
    """{"source": a clean copy of the example, "site": the folder pip installed it into}."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "cnnbench-numpy"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    site = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)]
    if setuptools_builds_wheels():
        command[4:4] = ["--no-build-isolation", "--no-index"]  # offline: build with the setuptools we have
    installed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, f"pip install failed:\n{installed.stdout[-3000:]}\n{installed.stderr[-3000:]}"
    return {"source": source, "site": site, "root": root}


def subprocess_env(site: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CNNBENCH_PLUGIN_MODULES", "CNNBENCH_PLUGINS", "CNNBENCH_DISABLE_PLUGINS")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env["OPENBLAS_NUM_THREADS"] = "1"  # the kit checks correctness; one BLAS thread is fastest on a busy machine
    return env


def run_python(code: str, example: dict[str, Path]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(example["site"]),
        cwd=example["root"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_found_through_its_entry_point(example):
    code = (
        "import json\nfrom importlib.metadata import distribution\nfrom cnnbench.plugins import load_registry\n"
        "registered = load_registry().backends['numpy']\np = registered.plugin\n"
        "print(json.dumps({'distribution': p.distribution, 'version': p.version, 'module': p.module,\n"
        "'status': p.status,\n"
        "    'hooks': p.hooks, 'framework': registered.item.framework,\n"
        "    'location': str(distribution('cnnbench-numpy').locate_file(''))}))"
    )
    found = json.loads(run_python(code, example))
    assert (found["distribution"], found["version"], found["module"]) == ("cnnbench-numpy", "0.1.0", "cnnbench_numpy")
    assert (found["status"], found["hooks"], found["framework"]) == (
        "ok",
        ["register_backends", "register_models"],
        "NumPy",
    )
    assert Path(found["location"]).resolve() == example["site"].resolve(), "the installed copy must be the one found"


def test_cnnbench_plugins_lists_it(example):
    listing = json.loads(run_python("from cnnbench.cli import main\nmain(['plugins', '--json'])", example))
    row = next(p for p in listing["plugins"] if p["name"] == "numpy")
    assert row["backends"] == ["numpy"] and row["status"] == "ok" and row["distribution"] == "cnnbench-numpy"


def test_the_example_passes_the_conformance_kit(example):
    """The example's own tests: the whole kit, including a real run through the worker."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::DeprecationWarning",
            str(example["source"] / "tests"),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        env=subprocess_env(example["site"]),
        cwd=example["root"],
    )
    assert done.returncode == 0, (
        f"the conformance kit failed on the example:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    )
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
