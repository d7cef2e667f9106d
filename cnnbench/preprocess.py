"""Preprocessing owned by the harness: every backend receives the very same float32 arrays.

Order: seeded validation hold-out, seeded subsets (--limit-train / --limit-test, stratified
by class), scaling to [0, 1], optional per-channel standardisation with training statistics.
The returned record goes into the result so a run can be reproduced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnbench.config import DataConfig
from cnnbench.datasets.base import DatasetArrays
from cnnbench.errors import DatasetError

#: Seed of the data selection, fixed so that subsets do not change with the training seed.
DATA_SEED = 20240101


@dataclass(frozen=True)
class PreparedData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    record: dict[str, Any]


def stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` samples keeping class proportions (largest remainders), in a seeded order."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take))[: n - take.sum()]:
        take[i] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def _scale(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1 / 255)
    return np.asarray(x, dtype=np.float32)


def prepare(arrays: DatasetArrays, config: DataConfig) -> PreparedData:
    rng = np.random.default_rng(DATA_SEED)
    x_train, y_train, x_test, y_test = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
    record: dict[str, Any] = {"scale": "x / 255 -> float32 [0, 1]" if x_train.dtype == np.uint8 else "float32 as given", "layout": "NHWC"}
    if config.validation:
        if config.validation >= len(y_train):
            raise DatasetError(f"validation hold-out {config.validation} leaves no training data ({len(y_train)} images)")
        keep = np.sort(rng.permutation(len(y_train))[config.validation :])
        x_train, y_train = x_train[keep], y_train[keep]
        record["validation_held_out"] = config.validation
    if config.limit_train:
        keep = stratified_subset(y_train, config.limit_train, rng)
        x_train, y_train = x_train[keep], y_train[keep]
    if config.limit_test:
        keep = stratified_subset(y_test, config.limit_test, rng)
        x_test, y_test = x_test[keep], y_test[keep]
    x_train, x_test = _scale(x_train), _scale(x_test)
    if config.standardize:
        mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        std = x_train.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
        record["standardize"] = {"mean": mean.tolist(), "std": std.tolist()}
    record.update(n_train=int(len(y_train)), n_test=int(len(y_test)), limit_train=config.limit_train, limit_test=config.limit_test, data_seed=DATA_SEED)
    return PreparedData(np.ascontiguousarray(x_train), np.asarray(y_train, np.int64), np.ascontiguousarray(x_test), np.asarray(y_test, np.int64), record)
