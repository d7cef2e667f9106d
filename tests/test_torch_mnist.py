"""One real run: the PyTorch backend on the real MNIST, one epoch, through the whole harness."""

import pytest

from cnnbench import results
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.plugins import load_registry
from cnnbench.runner import BackendTarget, RunOptions, run_benchmark


@pytest.mark.data
@pytest.mark.requires("torch")
def test_one_epoch_of_mnist_reaches_the_issue_bar(data_dir, tmp_path):
    registry = load_registry()
    train = TrainConfig(optimizer="adam", learning_rate=0.001, batch_size=100, epochs=1)
    result, path = run_benchmark(
        [BackendTarget("torch")],
        registry,
        train,
        DataConfig(dataset="mnist", data_dir=str(data_dir)),
        RunOptions(results_dir=str(tmp_path)),
    )
    row = result.backends[0]
    assert row.status == "ok", row.reason
    assert row.parameters == 3_255_914
    assert row.median("test_accuracy") >= 0.975
    assert result.preprocessing["n_train"] == 60_000 and result.preprocessing["n_test"] == 10_000
    assert results.load(path) == result
