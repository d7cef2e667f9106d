"""``cnnbench datasets``: the listing, ``--verify`` and failures, through a test dataset plugin."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from cnnbench.commands.datasets import datasets_command
from cnnbench.datasets import locate
from cnnbench.datasets.mnist import TRAIN_LABELS
from cnnbench.datasets.testing import tiny_idx_content, write_files
from cnnbench.errors import DatasetError, UsageError

PLUGIN = textwrap.dedent(
    """
    from cnnbench import hookimpl
    from cnnbench.datasets.testing import tiny_idx_content, tiny_idx_dataset

    @hookimpl
    def register_datasets(register):
        register(tiny_idx_dataset(tiny_idx_content(), name="tiny-listed"))
    """
)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv(locate.CACHE_DIR_ENV, str(tmp_path / "cache"))
    for var in (locate.DATA_DIR_ENV, locate.OFFLINE_ENV, locate.MIRROR_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))
    (tmp_path / "plugin_mod").mkdir()
    (tmp_path / "plugin_mod" / "tiny_dataset_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugin_mod"))
    monkeypatch.setenv("CNNBENCH_PLUGIN_MODULES", "tiny_dataset_plugin")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(datasets_command, list(args), catch_exceptions=True)


def test_lists_every_dataset_and_says_what_is_missing(env):
    result = invoke("--offline")
    assert result.exit_code == 0, result.output
    for name in ("mnist", "fashion-mnist", "cifar10", "synthetic", "synthetic-cifar", "tiny-listed"):
        assert name in result.output
    assert "missing" in result.output and "generated" in result.output
    assert "mnist: offline (--offline): put train-images-idx3-ubyte.gz" in result.output
    assert str(env / "cache" / "datasets" / "cifar10") in result.output


def test_verify_checks_and_caches_what_is_there(env):
    write_files(env / "data" / "tiny-listed", tiny_idx_content())
    before = invoke("tiny-listed", "--data-dir", str(env / "data"))
    assert before.exit_code == 0 and "not yet" in before.output and "(--data-dir)" in before.output
    result = invoke("tiny-listed", "--data-dir", str(env / "data"), "--verify")
    assert result.exit_code == 0, result.output
    assert "yes (sha256, cached)" in result.output and "mnist " not in result.output


def test_verify_reports_a_corrupt_dataset_and_fails(env):
    content = tiny_idx_content()
    content[TRAIN_LABELS] = content[TRAIN_LABELS][:-1] + b"\x07"
    write_files(env / "data" / "tiny-listed", content)
    result = invoke("--data-dir", str(env / "data"), "--verify", "tiny-listed", "synthetic")
    assert isinstance(result.exception, DatasetError) and result.exception.exit_code == 2
    assert "1 dataset(s) failed: tiny-listed" in str(result.exception)
    assert "failed (below)" in result.output
    assert "tiny-listed: sha256 mismatch for train-labels-idx1-ubyte (from " in result.output


def test_unknown_dataset_name(env):
    result = invoke("imagenet")
    assert isinstance(result.exception, UsageError) and "unknown dataset 'imagenet'" in str(result.exception)
