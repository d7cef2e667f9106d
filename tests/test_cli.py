"""The CLI through click's test runner: one-line errors with exit code 2, never a traceback."""

import pytest
from click.testing import CliRunner

from cnnbench.cli import cli


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize(
    "args, message",
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
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_missing_data_files_say_where_to_put_them(tmp_path):
    result = invoke("run", "-f", "torch", "--data-dir", str(tmp_path), "--offline", env={"CNNBENCH_DATA_DIR": "", "CNNBENCH_CACHE_DIR": str(tmp_path / "cache")})
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
