"""``cnnbench plugins``: where each plugin comes from, what it adds, and whether it works.

Test plugins are written into a temporary folder and loaded through $CNNBENCH_PLUGIN_MODULES,
exactly as a worker process would load them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import cnnbench
from cnnbench.cli import cli

TEST_PLUGINS = {
    "plug_missing": """
        from cnnbench import hookimpl
        from cnnbench_numpy.backend import NumpyBackend

        class MoonBackend(NumpyBackend):
            name = "moon"
            def unavailable_reason(self):
                return "moonlib is not installed (pip install 'cnnbench[moon]')"

        @hookimpl
        def register_backends(register):
            register(MoonBackend())
    """,
    "plug_half": """
        from cnnbench import hookimpl
        from cnnbench_numpy.backend import NumpyBackend

        class Here(NumpyBackend):
            name = "here"

        class Gone(NumpyBackend):
            name = "gone"
            def unavailable_reason(self):
                return "no such device"

        @hookimpl
        def register_backends(register):
            register(Here())
            register(Gone())
    """,
    "plug_raises_in_hook": """
        from cnnbench import hookimpl

        @hookimpl
        def register_backends(register):
            raise RuntimeError("registration exploded")
    """,
    "plug_bad_reason": """
        from cnnbench import hookimpl
        from cnnbench_numpy.backend import NumpyBackend

        class Buggy(NumpyBackend):
            name = "buggy-reason"
            def unavailable_reason(self):
                raise KeyError("oops")

        @hookimpl
        def register_backends(register):
            register(Buggy())
    """,
    "plug_import_error": """
        import moonlib_that_does_not_exist
    """,
}


@pytest.fixture
def test_plugins(tmp_path, monkeypatch, numpy_backend):
    """The test plugins subclass the example NumPy backend, which is available wherever cnnbench is."""
    for module, source in TEST_PLUGINS.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return ",".join(TEST_PLUGINS)


def invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, ["plugins", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def plugins_json(env: dict[str, str] | None = None) -> dict[str, dict]:
    data = json.loads(invoke("--json", env=env).output)
    return {row["name"]: row for row in data["plugins"]} | {"__env__": data["environment"]}


def test_builtin_plugins_with_distribution_module_hooks_and_status():
    rows = plugins_json(env={"CNNBENCH_PLUGINS": None, "CNNBENCH_DISABLE_PLUGINS": None})
    torch = rows["torch"]
    assert (torch["distribution"], torch["version"], torch["module"]) == (
        "cnnbench",
        cnnbench.__version__,
        "cnnbench_torch",
    )
    assert torch["hooks"] == ["register_backends"] and torch["backends"] == ["torch"]
    assert torch["status"] in ("ok", "unavailable")
    datasets = rows["datasets"]
    assert datasets["hooks"] == ["register_datasets"] and {"mnist", "synthetic"} <= set(datasets["datasets"])
    assert datasets["status"] == "ok"
    assert rows["__env__"] == {}


def test_table_names_every_column():
    output = invoke(env={"CNNBENCH_PLUGINS": None, "CNNBENCH_DISABLE_PLUGINS": None}).output
    for text in (
        "name",
        "distribution",
        "module",
        "hooks",
        "registers",
        "status",
        "cnnbench_torch",
        "register_backends",
        "backends: torch",
    ):
        assert text in output


def test_each_status_with_its_reason(test_plugins):
    rows = plugins_json(env={"CNNBENCH_PLUGIN_MODULES": test_plugins})
    assert rows["plug_missing"]["status"] == "unavailable"
    assert rows["plug_missing"]["detail"] == "moonlib is not installed (pip install 'cnnbench[moon]')"
    assert rows["plug_missing"]["distribution"] == "CNNBENCH_PLUGIN_MODULES"
    assert (rows["plug_half"]["status"], rows["plug_half"]["detail"]) == ("ok", "unavailable gone: no such device")
    assert rows["plug_half"]["backends"] == ["gone", "here"]
    assert rows["plug_raises_in_hook"]["status"] == "broken"
    assert "register_backends: RuntimeError: registration exploded" in rows["plug_raises_in_hook"]["detail"]
    assert rows["plug_bad_reason"]["status"] == "broken"
    assert rows["plug_bad_reason"]["detail"].startswith("buggy-reason.unavailable_reason() raised KeyError")
    assert rows["plug_import_error"]["status"] == "broken"
    assert "ModuleNotFoundError: No module named 'moonlib_that_does_not_exist'" in rows["plug_import_error"]["detail"]
    assert rows["torch"]["status"] in ("ok", "unavailable"), "one broken plugin must not affect the others"
    assert rows["__env__"] == {"CNNBENCH_PLUGIN_MODULES": test_plugins}


def test_plugin_text_is_printed_literally(test_plugins):
    """A reason like "pip install 'cnnbench[moon]'" is not rich markup: the brackets survive."""
    output = invoke(env={"CNNBENCH_PLUGIN_MODULES": "plug_missing"}).output
    assert "unavailable: moonlib is not installed" in output and "'cnnbench[moon]')" in output
    assert "CNNBENCH_PLUGIN_MODULES=plug_missing" in output


def test_block_list_disables_a_plugin_everywhere():
    env = {"CNNBENCH_DISABLE_PLUGINS": "torch, jax", "CNNBENCH_PLUGINS": None}
    rows = plugins_json(env=env)
    assert (rows["torch"]["status"], rows["torch"]["detail"]) == ("disabled", "by $CNNBENCH_DISABLE_PLUGINS")
    assert rows["jax"]["status"] == "disabled" and rows["torch"]["backends"] == []
    assert rows["datasets"]["status"] == "ok"
    assert rows["__env__"] == {"CNNBENCH_DISABLE_PLUGINS": "torch, jax"}
    run = CliRunner().invoke(cli, ["run", "--frameworks", "torch"], env=env)
    assert run.exit_code == 2 and "framework 'torch' is disabled by CNNBENCH_DISABLE_PLUGINS" in run.output


def test_allow_list_loads_only_the_named_plugins():
    rows = plugins_json(env={"CNNBENCH_PLUGINS": "datasets,torch", "CNNBENCH_DISABLE_PLUGINS": None})
    loaded = {name for name, row in rows.items() if name != "__env__" and row["status"] != "disabled"}
    assert loaded == {"datasets", "models", "torch"}  # the built-in datasets and models are never hidden
    assert rows["models"]["models"] == ["lenet", "resnet20", "vgg8"]
    assert all(
        row["detail"] == "by $CNNBENCH_PLUGINS" for name, row in rows.items() if name not in loaded | {"__env__"}
    )


def test_block_list_wins_over_allow_list():
    rows = plugins_json(env={"CNNBENCH_PLUGINS": "datasets,torch", "CNNBENCH_DISABLE_PLUGINS": "torch"})
    assert rows["torch"]["status"] == "disabled" and rows["datasets"]["status"] == "ok"


def test_listing_plugins_imports_no_framework():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom cnnbench.cli import cli\n"
        "result = CliRunner().invoke(cli, ['plugins'])\nassert result.exit_code == 0, result.output\n"
        "print(','.join(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'optax') if m in sys.modules))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    assert imported == "", f"cnnbench plugins imported {imported}: backends must import their framework lazily"
