"""Synthetic, learnable image data: no files, deterministic from a seed, any size.

Each class has a fixed random template; an image is its class template plus noise, so a
LeNet learns it in a few hundred steps and accuracy still means something.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnbench.config import DataConfig
from cnnbench.datasets.base import Dataset, DatasetArrays
from cnnbench.errors import DatasetError


def make_synthetic(
    n: int, shape: tuple[int, int, int], num_classes: int, seed: int, noise: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images of ``shape`` and their labels; the class templates depend only on ``shape``."""
    templates = np.random.default_rng(1234).random((num_classes, *shape))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    images = (1 - noise) * templates[labels] + noise * rng.random((n, *shape))
    return (images * 255).round().astype(np.uint8), labels.astype(np.int64)


class Synthetic(Dataset):
    """Options: ``n_train`` (default 10,000), ``n_test`` (2,000), ``seed`` (0), ``noise`` (0.5)."""

    name = "synthetic"
    description = "Generated, learnable MNIST-shaped images (28x28x1); no files needed"
    input_shape = (28, 28, 1)
    class_names = tuple(str(i) for i in range(10))

    def _options(self, config: DataConfig) -> tuple[int, int, int, float]:
        options = dict(config.options)
        try:
            n_train = int(options.pop("n_train", 10_000))
            n_test = int(options.pop("n_test", 2_000))
            seed = int(options.pop("seed", 0))
            noise = float(options.pop("noise", 0.5))
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{self.name}: bad option value ({exc})") from None
        if options:
            raise DatasetError(
                f"{self.name}: unknown option(s) {', '.join(options)}; valid: n_train, n_test, seed, noise"
            )
        if n_train < 1 or n_test < 1 or not 0 <= noise <= 1:
            raise DatasetError(f"{self.name}: n_train and n_test must be >= 1 and noise in [0, 1]")
        return n_train, n_test, seed, noise

    def load(self, config: DataConfig) -> DatasetArrays:
        n_train, n_test, seed, noise = self._options(config)
        x_train, y_train = make_synthetic(n_train, self.input_shape, self.num_classes, seed, noise)
        x_test, y_test = make_synthetic(n_test, self.input_shape, self.num_classes, seed + 1_000_003, noise)
        return DatasetArrays(
            x_train, y_train, x_test, y_test, source="generated", verified=True,
            verification="generated in this process from the seed (nothing read, nothing to check)",
        )  # fmt: skip

    def status(self, config: DataConfig) -> dict[str, Any]:
        try:
            n_train, n_test, _, _ = self._options(config)
        except DatasetError as exc:
            return {"location": "generated", "available": False, "reason": str(exc)}
        return {
            "location": "generated",
            "origin": "generated",
            "available": True,
            "n_train": n_train,
            "n_test": n_test,
            "size_bytes": 0,
            "verified": None,
            "cached": False,
        }


class SyntheticCifar(Synthetic):
    name = "synthetic-cifar"
    description = "Generated, learnable CIFAR-shaped images (32x32x3); no files needed"
    input_shape = (32, 32, 3)
