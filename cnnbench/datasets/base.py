"""The dataset interface: a registered name that yields NumPy arrays, the same for every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnbench.config import DataConfig


@dataclass(frozen=True)
class DatasetArrays:
    """Raw arrays as parsed: images NHWC (uint8 0-255, or float32 in [0, 1]), labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    #: Where the arrays came from (folder, cache file, "generated"), for results and listings.
    source: str = ""
    #: True when the source files' sha256 matched the dataset's declared checksums.
    verified: bool = False


class Dataset(ABC):
    """A dataset plugin. ``load`` locates, verifies, parses (and may cache) the data."""

    name: str = ""
    description: str = ""
    input_shape: tuple[int, int, int] = (28, 28, 1)
    class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def load(self, config: DataConfig) -> DatasetArrays:
        """Return the arrays or raise ``DatasetError`` with a one-line reason (what, where, how to fix)."""

    def status(self, config: DataConfig) -> dict[str, Any]:
        """Where the data is (or that it is missing), for ``cnnbench list``. Must be cheap."""
        return {"location": "", "available": True}
