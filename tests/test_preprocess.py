"""Harness-owned preprocessing: the same seeded selection and scaling for every backend."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbench.config import DataConfig
from cnnbench.datasets.base import DatasetArrays
from cnnbench.errors import DatasetError
from cnnbench.preprocess import DATA_SEED, channel_stats, prepare, stratified_subset


def make_arrays(n_train=1000, n_test=300, shape=(8, 8, 3), seed=0, imbalanced=True) -> DatasetArrays:
    rng = np.random.default_rng(seed)
    probabilities = np.linspace(1, 3, 10) / np.linspace(1, 3, 10).sum() if imbalanced else None
    y_train = rng.choice(10, size=n_train, p=probabilities).astype(np.int64)
    y_test = rng.choice(10, size=n_test, p=probabilities).astype(np.int64)
    x_train = rng.integers(0, 256, size=(n_train, *shape), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, *shape), dtype=np.uint8)
    return DatasetArrays(x_train, y_train, x_test, y_test, source="test", verified=True)


def test_scaling_and_layout():
    arrays = make_arrays()
    prepared = prepare(arrays, DataConfig())
    assert prepared.x_train.dtype == np.float32 and prepared.x_train.shape == (1000, 8, 8, 3)
    np.testing.assert_allclose(prepared.x_train, arrays.x_train / 255, atol=1e-7)
    assert prepared.record["layout"] == "NHWC" and prepared.record["n_train"] == 1000 and prepared.x_val is None
    assert prepared.record["source"] == "test" and prepared.record["verified"] is True


def test_stratified_subset_keeps_class_proportions():
    labels = make_arrays(n_train=5000).y_train
    chosen = stratified_subset(labels, 500, np.random.default_rng(DATA_SEED))
    assert len(chosen) == 500 and len(np.unique(chosen)) == 500 and np.all(np.diff(chosen) > 0)
    expected = np.bincount(labels, minlength=10) * 500 / len(labels)
    assert np.all(np.abs(np.bincount(labels[chosen], minlength=10) - expected) < 1)
    assert stratified_subset(labels, 10_000, np.random.default_rng(0)).tolist() == list(range(5000))


def test_selection_is_identical_between_calls_and_independent_of_anything_else():
    arrays = make_arrays()
    config = DataConfig(validation=100, limit_train=200, limit_test=50)
    first, second = prepare(arrays, config), prepare(arrays, config)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    assert first.record["selection_sha256"] == second.record["selection_sha256"]
    other = prepare(arrays, DataConfig(validation=100, limit_train=201, limit_test=50))
    assert other.record["selection_sha256"] != first.record["selection_sha256"]


def test_validation_hold_out_is_disjoint_from_training():
    arrays = make_arrays()
    # Make each training image identifiable by its first pixel pair.
    ids = np.arange(1000)
    arrays.x_train[:, 0, 0, 0], arrays.x_train[:, 0, 0, 1] = ids // 256, ids % 256
    prepared = prepare(arrays, DataConfig(validation=250))

    def ids_of(x):
        return set((np.rint(x[:, 0, 0, 0] * 255) * 256 + np.rint(x[:, 0, 0, 1] * 255)).astype(int).tolist())

    train_ids, val_ids = ids_of(prepared.x_train), ids_of(prepared.x_val)
    assert len(train_ids) == 750 and len(val_ids) == 250 and not train_ids & val_ids
    assert prepared.record["n_validation"] == 250 and prepared.y_val.shape == (250,)


def test_validation_larger_than_the_training_set():
    with pytest.raises(DatasetError, match="leaves no training data"):
        prepare(make_arrays(n_train=100), DataConfig(validation=100))


def test_standardisation_uses_training_statistics_per_channel():
    arrays = make_arrays(shape=(6, 6, 3))
    arrays.x_train[..., 2] = arrays.x_train[..., 2] // 4  # a channel with a different distribution
    prepared = prepare(arrays, DataConfig(standardize=True, validation=100))
    flat = prepared.x_train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(axis=0), 1, atol=1e-5)
    mean, std = np.array(prepared.record["standardize"]["mean"]), np.array(prepared.record["standardize"]["std"])
    assert mean[2] < mean[0] / 2
    np.testing.assert_allclose(
        prepared.x_test[0, 0, 0], (arrays.x_test[0, 0, 0] / 255 - mean) / std, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(prepared.x_val.reshape(-1, 3).mean(axis=0), 0, atol=0.1)


def test_standardisation_of_a_constant_channel_does_not_divide_by_zero():
    arrays = make_arrays(shape=(4, 4, 2))
    arrays.x_train[..., 1] = 7
    prepared = prepare(arrays, DataConfig(standardize=True))
    assert np.isfinite(prepared.x_train).all() and np.isfinite(prepared.x_test).all()
    np.testing.assert_allclose(prepared.x_train[..., 1], 0, atol=1e-6)


def test_channel_stats_match_numpy_for_uint8_and_float():
    x = make_arrays(n_train=300, shape=(5, 7, 3)).x_train
    reference = x.reshape(-1, 3).astype(np.float64) / 255
    for data in (x, (x / 255).astype(np.float32)):
        mean, std = channel_stats(data, chunk_images=64)
        np.testing.assert_allclose(mean, reference.mean(axis=0), atol=1e-7)
        np.testing.assert_allclose(std, reference.std(axis=0), atol=1e-7)


def test_outputs_are_fresh_writable_arrays_even_from_read_only_inputs():
    arrays = make_arrays()
    for array in (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test):
        array.flags.writeable = False
    prepared = prepare(arrays, DataConfig())
    for array in (prepared.x_train, prepared.y_train, prepared.x_test, prepared.y_test):
        assert array.flags.writeable and array.flags.c_contiguous and type(array) is np.ndarray
    assert prepared.y_train.dtype == np.int64


def test_float_inputs_are_kept_as_given():
    arrays = make_arrays()
    as_float = DatasetArrays(
        arrays.x_train / np.float32(255), arrays.y_train, arrays.x_test / np.float32(255), arrays.y_test
    )
    prepared = prepare(as_float, DataConfig(limit_train=100))
    assert prepared.record["scale"] == "float32 as given" and prepared.x_train.dtype == np.float32
    assert len(prepared.y_train) == 100
