"""Parser for the IDX format of MNIST and Fashion-MNIST, from raw or gzip-compressed bytes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cnnbench.datasets.archive import read_bytes
from cnnbench.errors import DatasetError

#: IDX type codes for the element dtypes MNIST-style files use.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, name: str = "IDX data", expected_ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file. Every structural problem is a ``DatasetError`` naming ``name``."""
    if len(data) < 4:
        raise DatasetError(f"{name}: file too short for an IDX header ({len(data)} bytes)")
    zero1, zero2, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(f"{name}: bad IDX magic number 0x{data[:4].hex()} (not an IDX file)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DatasetError(f"{name}: expected {expected_ndim} dimensions, the header says {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{name}: truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    body = len(data) - header
    if body < expected:
        raise DatasetError(f"{name}: truncated: header says shape {shape} ({expected} bytes), file has {body}")
    if body > expected:
        raise DatasetError(f"{name}: {body - expected} unexpected trailing bytes after shape {shape}")
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    except ValueError as exc:  # an empty dimension beside dimensions whose product overflows: "array is too big"
        raise DatasetError(f"{name}: shape {shape} cannot be represented ({exc})") from None
    return array.astype(dtype.newbyteorder("="), copy=False)


def parse_idx_pair(
    images: bytes, labels: bytes, names: tuple[str, str], image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels (N,) int64 from the bytes of an IDX image file and label file."""
    images_name, labels_name = names
    x = parse_idx(images, images_name, expected_ndim=3)
    y = parse_idx(labels, labels_name, expected_ndim=1)
    if x.dtype != np.uint8 or y.dtype != np.uint8:
        raise DatasetError(f"{images_name}/{labels_name}: expected unsigned-byte IDX data, got {x.dtype} and {y.dtype}")
    if x.shape[1:] != image_shape[:2]:
        raise DatasetError(
            f"{images_name}: images are {x.shape[1]}x{x.shape[2]}, expected {image_shape[0]}x{image_shape[1]}"
        )
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"{images_name} has {x.shape[0]} images but {labels_name} has {y.shape[0]} labels")
    return x.reshape((-1, *image_shape)), y.astype(np.int64)


def load_idx_pair(
    images_path: Path, labels_path: Path, image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``parse_idx_pair`` on two files (raw or .gz)."""
    return parse_idx_pair(
        read_bytes(images_path), read_bytes(labels_path), (images_path.name, labels_path.name), image_shape
    )
