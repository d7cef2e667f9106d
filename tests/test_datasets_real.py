"""The real datasets give the counts and statistics their README lists (skipped where absent)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from cnnbench.config import DataConfig
from cnnbench.datasets import locate
from cnnbench.datasets.cifar10 import CIFAR10
from cnnbench.datasets.mnist import MNIST, FashionMNIST
from cnnbench.preprocess import channel_stats, prepare

pytestmark = pytest.mark.data

DATA_DIR = Path(os.environ.get("CNNBENCH_DATA_DIR") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One temporary cache for the module: each dataset is parsed once, then mapped."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv(locate.CACHE_DIR_ENV, str(folder))
        patch.setenv(locate.OFFLINE_ENV, "1")  # tests never download
        yield folder


def need(subfolder: str) -> Path:
    if not (DATA_DIR / subfolder).is_dir():
        hint = "set CNNBENCH_DATA_DIR to the folder holding mnist/ and cifar10/"
        pytest.skip(f"real data not found: {DATA_DIR / subfolder} ({hint})")
    return DATA_DIR


@pytest.fixture(scope="module")
def mnist(cache_dir):
    return MNIST().load(DataConfig(dataset="mnist", data_dir=str(need("mnist"))))


@pytest.fixture(scope="module")
def cifar10(cache_dir):
    return CIFAR10().load(DataConfig(dataset="cifar10", data_dir=str(need("cifar10"))))


def test_mnist_counts_labels_and_statistics(mnist):
    assert mnist.verified
    assert mnist.x_train.shape == (60_000, 28, 28, 1) and mnist.x_test.shape == (10_000, 28, 28, 1)
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.y_test).sum() == 10_000 and len(np.unique(mnist.y_test)) == 10
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    mean, std = channel_stats(mnist.x_train)
    np.testing.assert_allclose(mean, [0.1307], atol=5e-5)
    np.testing.assert_allclose(std, [0.3081], atol=5e-5)


def test_cifar10_counts_and_statistics(cifar10):
    assert cifar10.verified
    assert cifar10.x_train.shape == (50_000, 32, 32, 3) and cifar10.x_test.shape == (10_000, 32, 32, 3)
    assert np.bincount(cifar10.y_train).tolist() == [5000] * 10
    assert np.bincount(cifar10.y_test).tolist() == [1000] * 10
    mean, std = channel_stats(cifar10.x_train)
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=5e-5)
    np.testing.assert_allclose(std, [0.2470, 0.2435, 0.2616], atol=5e-5)


@pytest.mark.parametrize("dataset", [MNIST(), CIFAR10()], ids=["mnist", "cifar10"])
def test_second_load_is_a_fast_cache_hit(dataset, mnist, cifar10):
    first = mnist if dataset.name == "mnist" else cifar10
    config = DataConfig(dataset=dataset.name, data_dir=str(DATA_DIR))
    assert dataset.status(config)["cached"] is True
    start, cpu_start = time.perf_counter(), time.process_time()
    again = dataset.load(config)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert isinstance(again.x_train, np.memmap) and again.cache == first.cache and again.verified
    assert "sha256 recorded" in again.verification  # the hit was checked, not trusted
    # CPU time, not wall time: hashing every cached file costs ~0.12 s of CPU for CIFAR-10 (docs/decisions.md),
    # while the wall time on a shared, loaded machine may be several times that.
    assert cpu < 0.5, f"a cached load took {cpu:.2f} s of CPU ({elapsed:.2f} s wall)"


def test_mnist_chapter_split_and_stratified_limit(mnist):
    prepared = prepare(mnist, DataConfig(dataset="mnist", validation=5000))
    assert prepared.x_train.shape == (55_000, 28, 28, 1) and prepared.x_val.shape == (5000, 28, 28, 1)
    assert prepared.x_train.dtype == np.float32 and prepared.x_train.min() >= 0.0 and prepared.x_train.max() <= 1.0
    limited = prepare(mnist, DataConfig(dataset="mnist", limit_train=1000, limit_test=500))
    counts = np.bincount(limited.y_train, minlength=10)
    expected = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]) * 1000 / 60_000
    assert counts.sum() == 1000 and np.all(np.abs(counts - expected) < 1)
    assert len(limited.y_test) == 500 and np.bincount(limited.y_test, minlength=10).min() >= 40


@pytest.mark.skipif(
    not FASHION_SYSTEM_DIR.is_dir(), reason=f"{FASHION_SYSTEM_DIR} absent (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_found_in_the_system_folder_without_flags(cache_dir, monkeypatch):
    monkeypatch.delenv(locate.DATA_DIR_ENV, raising=False)
    dataset = FashionMNIST()
    config = DataConfig(dataset=dataset.name)
    status = dataset.status(config)
    assert status["available"] and status["origin"] == "system" and status["location"] == str(FASHION_SYSTEM_DIR)
    arrays = dataset.load(config)
    assert arrays.verified and arrays.x_train.shape == (60_000, 28, 28, 1)
    assert np.bincount(arrays.y_train).tolist() == [6000] * 10 and np.bincount(arrays.y_test).tolist() == [1000] * 10
    assert arrays.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    mean, std = channel_stats(arrays.x_train)
    np.testing.assert_allclose(mean, [0.2860], atol=5e-4)
    np.testing.assert_allclose(std, [0.3530], atol=5e-4)
