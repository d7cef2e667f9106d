"""Preprocessing owned by the harness: every backend receives the very same float32 arrays.

Order: seeded validation hold-out, seeded subsets (--limit-train / --limit-test, stratified
by class), scaling to [0, 1], optional per-channel standardisation with training statistics.
The selection depends only on the labels and a fixed seed, never on the training seed or the
framework, so every backend trains on the same images in every run. The returned record goes
into the result so a run can be reproduced (and the selection checked) exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnbench.config import DataConfig
from cnnbench.datasets.base import DatasetArrays
from cnnbench.errors import DatasetError

#: Seed of the data selection, fixed so that subsets do not change with the training seed.
DATA_SEED = 20240101
#: A channel whose training std is below this is only centred, not divided (e.g. a constant border).
MIN_STD = 1e-6


@dataclass(frozen=True)
class PreparedData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    record: dict[str, Any]
    #: The held-out validation images (``--validation N``), preprocessed like the rest; None without.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


def stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` samples keeping class proportions (largest remainders), sorted.

    Which samples of each class are taken is drawn from ``rng``.
    """
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen))


def _scale(x: np.ndarray) -> np.ndarray:
    """A fresh float32 array in [0, 1] (one pass over the data: CIFAR-10 is 150 M values)."""
    if x.dtype == np.uint8:
        out = np.empty(x.shape, dtype=np.float32)
        np.multiply(x, np.float32(1 / 255), out=out, dtype=np.float32)
        return out
    return np.array(x, dtype=np.float32)


def channel_stats(x: np.ndarray, chunk_images: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) of NHWC images, on the [0, 1] scale.

    uint8 images are counted exactly with per-channel histograms; float images are summed in
    float64. Both go channel-major chunk by chunk: a NumPy reduction over axes (0, 1, 2) of an
    NHWC array runs an inner loop of length C and takes ~15 s on CIFAR-10 here.
    """
    channels = x.shape[-1]
    n = 0
    if x.dtype == np.uint8:
        counts = np.zeros((channels, 256), dtype=np.int64)
        for start in range(0, len(x), chunk_images):
            block = np.ascontiguousarray(x[start : start + chunk_images].reshape(-1, channels).T)
            for c in range(channels):
                counts[c] += np.bincount(block[c], minlength=256)
            n += block.shape[1]
        values = np.arange(256, dtype=np.float64) / 255
        mean = counts @ values / n
        var = counts @ (values * values) / n - mean * mean
    else:
        total, squares = np.zeros(channels), np.zeros(channels)
        for start in range(0, len(x), chunk_images):
            block = np.ascontiguousarray(x[start : start + chunk_images].reshape(-1, channels).T, dtype=np.float64)
            total += block.sum(axis=1)
            squares += np.einsum("ij,ij->i", block, block)
            n += block.shape[1]
        mean = total / n
        var = squares / n - mean * mean
    return mean, np.sqrt(np.maximum(var, 0.0))


def _labels(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A fresh int64 copy: never a read-only view of the memory-mapped cache."""
    return np.array(np.asarray(y)[idx], dtype=np.int64)


def _indices_digest(*index_arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for indices in index_arrays:
        digest.update(np.asarray(indices, dtype="<i8").tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def prepare(arrays: DatasetArrays, config: DataConfig) -> PreparedData:
    """The float32 NHWC arrays every backend receives, and the record of how they were made."""
    rng = np.random.default_rng(DATA_SEED)
    n_train_total, n_test_total = len(arrays.y_train), len(arrays.y_test)
    train_idx, test_idx = np.arange(n_train_total), np.arange(n_test_total)
    val_idx = np.arange(0)
    record: dict[str, Any] = {
        "dataset": config.dataset,
        "source": arrays.source,
        "verified": arrays.verified,
        "verification": arrays.verification,
        "scale": "x / 255 -> float32 [0, 1]" if arrays.x_train.dtype == np.uint8 else "float32 as given",
        "layout": "NHWC",
    }
    if config.validation:
        if config.validation >= n_train_total:
            raise DatasetError(
                f"validation hold-out {config.validation} leaves no training data ({n_train_total} images)"
            )
        order = rng.permutation(n_train_total)
        val_idx, train_idx = np.sort(order[: config.validation]), np.sort(order[config.validation :])
        record["validation_held_out"] = config.validation
    if config.limit_train:
        train_idx = train_idx[stratified_subset(np.asarray(arrays.y_train)[train_idx], config.limit_train, rng)]
    if config.limit_test:
        test_idx = test_idx[stratified_subset(np.asarray(arrays.y_test), config.limit_test, rng)]

    def take(x: np.ndarray, idx: np.ndarray, total: int) -> np.ndarray:
        return x if len(idx) == total else x[idx]

    x_train_raw = take(arrays.x_train, train_idx, n_train_total)
    x_train = _scale(x_train_raw)
    x_test = _scale(take(arrays.x_test, test_idx, n_test_total))
    x_val = _scale(arrays.x_train[val_idx]) if len(val_idx) else None
    if config.standardize:
        mean64, std64 = channel_stats(x_train_raw)
        mean, std = mean64.astype(np.float32), std64.astype(np.float32)
        divisor = np.where(std < MIN_STD, np.float32(1), std).astype(np.float32)
        for x in (x_train, x_test, x_val):  # in place: each is a fresh array made by _scale
            if x is not None:
                x -= mean
                x /= divisor
        record["standardize"] = {"mean": mean.tolist(), "std": std.tolist()}
    record.update(
        n_train=len(train_idx),
        n_test=len(test_idx),
        n_validation=len(val_idx),
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        data_seed=DATA_SEED,
        selection_sha256=_indices_digest(train_idx, test_idx, val_idx),
    )
    return PreparedData(
        np.ascontiguousarray(x_train),
        _labels(arrays.y_train, train_idx),
        np.ascontiguousarray(x_test),
        _labels(arrays.y_test, test_idx),
        record,
        None if x_val is None else np.ascontiguousarray(x_val),
        _labels(arrays.y_train, val_idx) if len(val_idx) else None,
    )
