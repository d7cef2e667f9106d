"""The dataset interface: a registered name that yields NumPy arrays, the same for every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnbench.config import DataConfig
from cnnbench.errors import DatasetError


@dataclass(frozen=True)
class DatasetArrays:
    """Raw arrays as parsed: images NHWC (uint8 0-255, or float32 in [0, 1]), labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    #: Where the arrays came from (folder, archive, "generated"), for results and listings.
    source: str = ""
    #: True only when this load checked the arrays (or generated them itself): parsed from source files
    #: whose sha256 matched the dataset's declared checksums, or mapped from a cache entry whose files
    #: matched the sha256 recorded when it was built from such files. A recorded "verified" alone never
    #: makes it True.
    verified: bool = False
    #: The cache folder the arrays are memory-mapped from ("" when built in memory).
    cache: str = ""
    #: What this load checked, in words, for results ("" when the dataset says nothing).
    verification: str = ""


class Dataset(ABC):
    """A dataset plugin. ``load`` locates, verifies, parses (and may cache) the data."""

    name: str = ""
    description: str = ""
    input_shape: tuple[int, int, int] = (28, 28, 1)
    class_names: tuple[str, ...] = ()
    #: Official numbers of training and test images, for listings (None when they vary).
    n_train: int | None = None
    n_test: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def load(self, config: DataConfig) -> DatasetArrays:
        """Return the arrays or raise ``DatasetError`` with a one-line reason (what, where, how to fix).

        The harness calls it in the parent (which may download, verify and fill a cache) and
        again in every worker process, where it must be fast.
        """

    def status(self, config: DataConfig) -> dict[str, Any]:
        """Where the data is (or that it is missing), for ``cnnbench datasets``. Must be cheap.

        Keys: ``available`` (bool), ``location`` (str), and optionally ``origin``, ``size_bytes``,
        ``verified`` (True, False or None for "not checked yet"), ``cached``, ``reason``.
        """
        return {"location": "", "available": True}


def check_arrays(
    dataset: Dataset, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> None:
    """Reject arrays that break the contract every backend relies on, with a one-line reason."""
    for split, x, y in (("training", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(dataset.input_shape):
            raise DatasetError(
                f"{dataset.name}: {split} images have shape {tuple(x.shape)},"
                f" expected (N, {', '.join(map(str, dataset.input_shape))})"
            )
        if x.dtype not in (np.uint8, np.float32):
            raise DatasetError(f"{dataset.name}: {split} images are {x.dtype}, expected uint8 or float32")
        if y.ndim != 1 or len(y) != len(x):
            raise DatasetError(f"{dataset.name}: {len(x)} {split} images but {len(y)} labels")
        if len(y) == 0:
            raise DatasetError(f"{dataset.name}: no {split} images")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= dataset.num_classes:
            raise DatasetError(
                f"{dataset.name}: {split} labels range over {low}..{high}, expected 0..{dataset.num_classes - 1}"
            )
