"""The CLI through click's test runner: one-line errors with exit code 2, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import resultgen
from cnnbench.cli import cli
from cnnbench.errors import ExitCode


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--frameworks", "nosuch"], "unknown framework 'nosuch'; valid:"),
        (["run", "--dataset", "nosuch"], "unknown dataset 'nosuch'; valid:"),
        (["run", "--epochs", "0"], "epochs must be at least 1"),
        (["run", "--batch-size", "0"], "batch size must be at least 1"),
        (["run", "--lr", "-0.1"], "learning rate must be"),
        (["run", "--lr", "abc"], "'abc' is not a valid float"),
        (["run", "--frameworks", "torch:nope"], "unknown variant 'nope' of framework 'torch'"),
        (["run", "--backend-option", "noequals"], "KEY=VALUE"),
        (["nosuchcommand"], "No such command"),
        (["run", "-f", "[/]"], "unknown framework '[/]'"),  # once a rich MarkupError traceback
        (["run", "-d", "[link=http://x]evil[/link]"], "unknown dataset '[link=http://x]evil[/link]'"),
        (["compare", "[/]nosuch.json"], "[/]nosuch.json"),
        (["[bold]x"], "No such command '[bold]x'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_missing_data_files_say_where_to_put_them(tmp_path):
    result = invoke(
        "run",
        "-f",
        "torch",
        "--data-dir",
        str(tmp_path),
        "--offline",
        env={"CNNBENCH_DATA_DIR": "", "CNNBENCH_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte" in result.output and "Traceback" not in result.output


def test_list_shows_backends_datasets_plugins_and_availability():
    result = invoke("list")
    assert result.exit_code == 0
    for text in ("torch", "PyTorch", "available", "mnist", "synthetic", "cnnbench"):
        assert text in result.output


def test_list_shows_a_broken_plugin_with_its_error(fixture_plugins):
    fixture_plugins("broken_on_import")
    result = invoke("list")
    assert result.exit_code == 0
    assert "broken_on_import" in result.output and "broken on purpose" in result.output


def test_version():
    assert invoke("--version").output.startswith("cnnbench, version")


# --- text from result files and plugins is shown literally (issue 15, item 9) ------------------------

HOSTILE_NAMES = ("[/]", "[link=http://x]evil[/link]")


def hostile_store(folder: Path) -> list[Path]:
    """Two runs of backends named like markup, equal speeds: compare finds no regression."""
    rows = [resultgen.backend(name, [1000.0, 1001.0, 999.0]) for name in HOSTILE_NAMES]
    return [
        resultgen.save(
            resultgen.run(rows, run_id=f"2025010{day}T000000Z", created=f"2025-01-0{day}T00:00:00+00:00"), folder
        )
        for day in (1, 2)
    ]


def test_compare_shows_markup_in_backend_names_literally(tmp_path: Path) -> None:
    base, current = hostile_store(tmp_path / "results")
    result = invoke("compare", str(base), str(current), "--fail-on-missing")
    assert result.exit_code == ExitCode.OK, result.output
    for name in HOSTILE_NAMES:
        assert name in result.output
    assert "no regression" in result.output and "Traceback" not in result.output


def test_history_shows_markup_in_backend_names_literally(tmp_path: Path) -> None:
    store = tmp_path / "results"
    hostile_store(store)
    result = invoke("history", "--results-dir", str(store))
    assert result.exit_code == ExitCode.OK, result.output
    for name in HOSTILE_NAMES:
        assert name in result.output
    assert "Traceback" not in result.output


HOSTILE_PLUGIN = """
from cnnbench import hookimpl
from cnnbench.backend import BackendOption
from stub_items import StubBackend


class Hostile(StubBackend):
    framework = "[link=http://x]evil[/link]"
    options = (BackendOption("mode", ("[/]", "plain"), None, "[bold]help[/bold]"),)

    def unavailable_reason(self):
        return "[/] not here"

    def framework_version(self, variant=None):
        raise SystemExit("[red]exits[/red]")


@hookimpl
def register_backends(register):
    register(Hostile("hostile"))
"""


def test_list_and_plugins_show_plugin_text_literally_and_survive_system_exit(
    tmp_path: Path,
    fixture_plugins: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "hostile_text.py").write_text(HOSTILE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    fixture_plugins("hostile_text")
    listed = invoke("list")
    assert listed.exit_code == ExitCode.OK, listed.output
    for text in (
        "[link=http://x]evil[/link]",
        "unavailable: [/] not here",
        "SystemExit: [red]exits[/red]",
        "hostile.mode",
        "[/] | plain",
        "[bold]help[/bold]",
    ):
        assert text in listed.output, text
    plugins = invoke("plugins")
    assert plugins.exit_code == ExitCode.OK, plugins.output
    assert "[/] not here" in plugins.output and "[bold]help[/bold]" in plugins.output
