"""Presets, the reproduce command and plots."""

import pytest
from click.testing import CliRunner

from cnnbench import presets
from cnnbench.cli import cli
from cnnbench.errors import UsageError


def test_presets_carry_the_chapters_settings():
    adam = presets.get("mnist-adam")
    assert (adam.train.optimizer, adam.train.learning_rate, adam.train.epochs, adam.train.batch_size) == (
        "adam",
        0.001,
        10,
        100,
    )
    assert adam.train.init == "normal" and adam.data.validation == 5_000 and adam.published_accuracy == 0.9884
    sgd = presets.get("mnist-sgd")
    assert (sgd.train.optimizer, sgd.train.learning_rate, sgd.train.init) == ("sgd", 0.01, "glorot-uniform")
    cifar = presets.get("cifar10-adam")
    assert cifar.train.epochs == 20 and cifar.train.dropout == 0.2 and cifar.data.dataset == "cifar10"
    assert presets.get("cifar10-keras").notes  # the optimizer choice is explained


def test_quick_shortens_and_unknown_names_fail():
    train, data = presets.get("mnist-adam").configs(quick=True)
    assert train.epochs == 2 and data.limit_train == 10_000 and data.validation == 5_000
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        presets.parse("mnist-adam,nope")
    assert len(presets.parse("all")) == 4


def test_explicit_flags_override_a_preset(results_dir, numpy_backend):
    out = CliRunner().invoke(
        cli,
        [
            "run",
            "--preset",
            "mnist-adam",
            "-f",
            numpy_backend,
            "-d",
            "synthetic",
            "--epochs",
            "1",
            "--limit-train",
            "500",
            "--limit-test",
            "100",
            "--validation",
            "0",
            "--threads",
            "1",
            "--skip-parity",
        ],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    from cnnbench import results

    saved = results.load(results.resolve("latest", results_dir))
    assert saved.preset == "mnist-adam"
    assert (saved.train.optimizer, saved.train.init, saved.train.epochs) == ("adam", "normal", 1)
    assert saved.data.dataset == "synthetic" and saved.preprocessing["n_train"] == 500


@pytest.mark.data
@pytest.mark.requires("torch")  # the NumPy backend takes 4x longer on the quick MNIST run
def test_reproduce_quick_prints_published_and_measured_and_plots(data_dir, results_dir, tmp_path):
    plot = tmp_path / "repro.png"
    out = CliRunner().invoke(
        cli,
        [
            "reproduce",
            "-f",
            "torch",
            "--presets",
            "mnist-sgd",
            "--quick",
            "--data-dir",
            str(data_dir),
            "--plot",
            str(plot),
        ],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    assert "QUICK" in out.output and "97.85%" in out.output and "mnist-sgd" in out.output
    assert plot.stat().st_size > 10_000
    assert len(list(results_dir.glob("*.json"))) == 1


def test_presets_command_lists_all_four():
    out = CliRunner().invoke(cli, ["presets"], catch_exceptions=False)
    for name in presets.PRESETS:
        assert name in out.output
